"""Email adapters: MIME composition, DKIM signing, the relay client (aiosmtplib) and the SMTP
listener (aiosmtpd, in our event loop). They translate between the wire and gateway.services."""
