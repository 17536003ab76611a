#!/bin/bash
# The README "Notifications" examples (issue 8). Run against a daemon on 127.0.0.1:18086 with the admin
# token below (gw.toml: [http] port = 18086, admin_token; [smtp] mail_domain and message_id_secret so
# the email channel is on). Without an SMSC and relay the messages stay queued/scheduled.
set -e
GW=http://127.0.0.1:18086
ADMIN="Authorization: Bearer h6-demo-admin-token-0123456789"
J="Content-Type: application/json"
say() { echo; echo "### $*"; }
run() { echo "\$ $*" | sed "s/$KEY/\$KEY/g" ; eval "$@" | jq -c . ; }

say tenant with business hours
KEY=$(curl -s -X POST $GW/v1/tenants -H "$ADMIN" -H "$J" -d '{"name": "Serwis Kowalski", "sms_credits": 100,
  "business_hours": {"timezone": "Europe/Warsaw",
    "weekly": {"mon": ["09:00-17:00"], "tue": ["09:00-17:00"], "wed": ["09:00-17:00"],
               "thu": ["09:00-17:00"], "fri": ["09:00-17:00"], "sat": ["10:00-14:00"]},
    "closed": ["2026-12-24", "2026-12-25", "2026-12-26"]}}' | jq -r .api_key)
T="Authorization: Bearer $KEY"
curl -s -X PUT $GW/v1/contacts/jan -H "$T" -H "$J" -d '{"name": "Jan", "phones": ["+48500100200"], "emails": ["jan@example.com"]}' >/dev/null

say 1 repair shop: ready for pickup
run "curl -s -X PUT $GW/v1/templates/repair-ready -H '$T' -H '$J' -d '{\"sms\": {\"text\": \"{{ item }} is ready for pickup (repair {{ context.id }}). Open until 17:00.\"}, \"email\": {\"subject\": \"Repair {{ context.id }} is ready\", \"text\": \"Hello,\\nyour {{ item }} is ready for pickup.\"}}'"
run "curl -s -X POST $GW/v1/templates/repair-ready/render -H '$T' -H '$J' -d '{\"variables\": {\"item\": \"Kross Trans 5\", \"context\": {\"id\": \"R-1042\"}}}'"
run "curl -s -X POST $GW/v1/rules -H '$T' -H '$J' -d '{\"event\": \"order.status_changed\", \"match\": {\"status\": \"ready\"}, \"channels\": [\"sms\", \"email\"], \"template\": \"repair-ready\"}'"
run "curl -s -X POST $GW/v1/app-events -H '$T' -H '$J' -d '{\"type\": \"order.status_changed\", \"contact_id\": \"jan\", \"context\": {\"type\": \"repair\", \"id\": \"R-1042\"}, \"data\": {\"status\": \"in_repair\", \"item\": \"Kross Trans 5\"}}'"
run "curl -s -X POST $GW/v1/app-events -H '$T' -H '$J' -d '{\"type\": \"order.status_changed\", \"contact_id\": \"jan\", \"context\": {\"type\": \"repair\", \"id\": \"R-1042\"}, \"data\": {\"status\": \"ready\", \"item\": \"Kross Trans 5\"}}'"

say 2 courier: on the way, arriving, delivered
run "curl -s -X PUT $GW/v1/templates/courier -H '$T' -H '$J' -d '{\"sms\": {\"text\": \"{% if status == \\\"on_the_way\\\" %}Your parcel {{ context.id }} is on the way.{% elif status == \\\"arriving\\\" %}The courier arrives in about {{ eta_minutes }} min.{% else %}Parcel {{ context.id }} delivered. Thank you!{% endif %}\"}}'"
run "curl -s -X POST $GW/v1/rules -H '$T' -H '$J' -d '{\"event\": \"delivery.status_changed\", \"match\": {\"status\": {\"in\": [\"on_the_way\", \"arriving\", \"delivered\"]}}, \"channels\": [\"sms\"], \"template\": \"courier\"}'"
for s in on_the_way arriving delivered; do
run "curl -s -X POST $GW/v1/app-events -H '$T' -H '$J' -d '{\"type\": \"delivery.status_changed\", \"id\": \"dlv-5521-$s\", \"contact_id\": \"jan\", \"context\": {\"type\": \"parcel\", \"id\": \"P-5521\"}, \"data\": {\"status\": \"$s\", \"eta_minutes\": 10}}' | jq -c '.results[] | {outcome, messages: [.messages[].id]}'"
done

say 3 taxi: departed, arrived, order closed
run "curl -s -X PUT $GW/v1/templates/taxi-departed -H '$T' -H '$J' -d '{\"sms\": {\"text\": \"Your taxi {{ car }} is on its way, ETA {{ eta | datetime(\\\"%H:%M\\\") }}.\"}}'"
run "curl -s -X PUT $GW/v1/templates/taxi-arrived -H '$T' -H '$J' -d '{\"sms\": {\"text\": \"Your taxi {{ car }} is waiting outside.\"}}'"
run "curl -s -X PUT $GW/v1/templates/taxi-closed -H '$T' -H '$J' -d '{\"email\": {\"subject\": \"Your ride {{ context.id }}\", \"text\": \"Fare: {{ fare }} PLN. Thank you for riding with us.\", \"html\": \"<p>Fare: <b>{{ fare }} PLN</b></p>\"}}'"
for e in departed arrived closed; do
ch='"sms"'; [ $e = closed ] && ch='"email"'
run "curl -s -X POST $GW/v1/rules -H '$T' -H '$J' -d '{\"event\": \"ride.$e\", \"channels\": [$ch], \"template\": \"taxi-$e\"}' | jq -c '{id, event, template}'"
done
run "curl -s -X POST $GW/v1/app-events -H '$T' -H '$J' -d '{\"type\": \"ride.departed\", \"contact_id\": \"jan\", \"context\": {\"type\": \"ride\", \"id\": \"77\"}, \"data\": {\"car\": \"WA 12345\", \"eta\": \"2026-11-24T18:40:00+01:00\"}}'"
run "curl -s -X POST $GW/v1/app-events -H '$T' -H '$J' -d '{\"type\": \"ride.arrived\", \"contact_id\": \"jan\", \"context\": {\"type\": \"ride\", \"id\": \"77\"}, \"data\": {\"car\": \"WA 12345\"}}' | jq -c '.results[] | {outcome, thread: .messages[0].thread_id}'"
run "curl -s -X POST $GW/v1/app-events -H '$T' -H '$J' -d '{\"type\": \"ride.closed\", \"contact_id\": \"jan\", \"context\": {\"type\": \"ride\", \"id\": \"77\"}, \"data\": {\"fare\": \"38.50\"}}' | jq -c '.results[] | {outcome, reason, channels}'"

say 4 booking reminder 24 h before a visit that moves
run "curl -s -X PUT $GW/v1/templates/visit-reminder -H '$T' -H '$J' -d '{\"sms\": {\"text\": \"Reminder: your visit is tomorrow at {{ visit_at | datetime(\\\"%H:%M\\\") }}. Reply to reschedule.\"}}' | jq -c '{name, variables}'"
RULE=$(curl -s -X POST $GW/v1/rules -H "$T" -H "$J" -d '{"event": "visit.time_changed", "channels": ["sms"], "template": "visit-reminder", "remind_before": "P1D", "time_field": "visit_at", "business_hours_only": true}' | jq -r .id)
echo "rule: $RULE"
run "curl -s -X POST $GW/v1/app-events -H '$T' -H '$J' -d '{\"type\": \"visit.time_changed\", \"contact_id\": \"jan\", \"context\": {\"type\": \"booking\", \"id\": \"881\"}, \"data\": {\"visit_at\": \"2026-12-02T12:00:00+01:00\"}}'"
run "curl -s -X POST $GW/v1/app-events -H '$T' -H '$J' -d '{\"type\": \"visit.time_changed\", \"contact_id\": \"jan\", \"context\": {\"type\": \"booking\", \"id\": \"881\"}, \"data\": {\"visit_at\": \"2026-12-07T08:30:00+01:00\"}}'"
run "curl -s '$GW/v1/threads?context_type=booking&context_id=881' -H '$T' | jq -c '.threads[0].id' "
run "curl -s -X DELETE '$GW/v1/messages?dedupe_key=rule:$RULE:booking:881' -H '$T' | jq -c '.messages[] | {id, status, status_reason}'"

say 5 plain messages: delay, business hours, dedupe key, a missing variable
run "curl -s -X POST $GW/v1/messages -H '$T' -H '$J' -d '{\"contact_id\": \"jan\", \"channels\": [\"sms\"], \"text\": \"We will call you back.\", \"delay\": \"PT15M\"}' | jq -c '.messages[0] | {id, status}'"
run "curl -s -X POST $GW/v1/messages -H '$T' -H '$J' -d '{\"contact_id\": \"jan\", \"channels\": [\"sms\"], \"text\": \"Your invoice is ready.\", \"business_hours_only\": true, \"dedupe_key\": \"invoice:2026-11\"}' | jq -c '.messages[0] | {id, status}'"
run "curl -s -X POST $GW/v1/messages -H '$T' -H '$J' -d '{\"contact_id\": \"jan\", \"channels\": [\"sms\"], \"text\": \"Your invoice (corrected) is ready.\", \"business_hours_only\": true, \"dedupe_key\": \"invoice:2026-11\"}' | jq -c '.messages[0] | {id, status}'"
run "curl -s -X POST $GW/v1/messages -H '$T' -H '$J' -d '{\"contact_id\": \"jan\", \"channels\": [\"sms\"], \"template\": \"visit-reminder\", \"variables\": {}}'"
run "curl -s -X PUT $GW/v1/templates/broken -H '$T' -H '$J' -d '{\"sms\": {\"text\": \"Hello\\n{{ name \"}}'"
