"""Domain objects to response bodies."""

from __future__ import annotations

from gateway.domain.mo import keywords_from_json
from gateway.domain.model import Contact, Tenant
from gateway.http.schemas import (
    AttachmentsOut,
    ConsentOut,
    ContactOut,
    PhoneOut,
    SmsKeywordsOut,
    SmsSenderOut,
    TenantOut,
)


def tenant_out(t: Tenant, mail_domain: str) -> TenantOut:
    return TenantOut(
        id=t.id,
        name=t.name,
        mailbox_prefix=t.mailbox_prefix,
        mailbox_address=f"{t.mailbox_prefix}@{mail_domain}",
        mailbox_aliases=list(t.mailbox_aliases),
        trusted_domains=list(t.trusted_domains),
        sms_sender=SmsSenderOut(
            mode=t.sms_sender_mode.value,
            alphanumeric=t.sms_alphanumeric,
            allowed=list(t.sms_alphanumeric_allowed),
        ),
        attachments=AttachmentsOut(
            save=t.attachments_save,
            quota_bytes=t.attachments_quota_bytes,
            used_bytes=t.attachments_used_bytes,
        ),
        sms_credits=t.sms_credits,
        webhook_url=t.webhook_url,
        business_hours=t.business_hours,
        sms_keywords=SmsKeywordsOut(**keywords_from_json(t.sms_keywords).as_json()),
        require_verified_sender=t.require_verified_sender,
        created_at=t.created_at,
        updated_at=t.updated_at,
    )


def contact_out(c: Contact) -> ContactOut:
    return ContactOut(
        id=c.contact_id,
        name=c.name,
        phones=[p.e164 for p in c.phones],
        phone_details=[
            PhoneOut(number=p.e164, type=p.number_type, region=p.region, sms_capable=p.can_receive_sms)
            for p in c.phones
        ],
        emails=list(c.emails),
        consent=ConsentOut(sms=c.consent.sms, email=c.consent.email, marketing=c.consent.marketing),
        blocked=c.blocked,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )
