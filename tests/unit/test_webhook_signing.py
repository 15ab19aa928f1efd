"""Our signatures are what the reference Standard Webhooks library expects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.models import Tenant
from shared.webhooks import new_secret, sign, signed_headers, signing_secrets


def test_signed_headers_verify_with_standardwebhooks() -> None:
    secret = new_secret()
    now = int(datetime.now(UTC).timestamp())
    body = '{"type":"job.succeeded","data":{"id":"x"}}'

    headers = signed_headers([secret], "msg_1", now, body)

    assert Webhook(secret).verify(body, headers) == {"type": "job.succeeded", "data": {"id": "x"}}
    assert headers["webhook-signature"] == sign(secret, "msg_1", now, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_previous_secret_signs_only_during_its_grace_period() -> None:
    now = datetime.now(UTC)
    tenant = Tenant(
        webhook_secret=new_secret(),
        previous_webhook_secret=new_secret(),
        previous_secret_expires_at=now + timedelta(hours=1),
    )
    assert signing_secrets(tenant, now) == [tenant.webhook_secret, tenant.previous_webhook_secret]
    assert signing_secrets(tenant, now + timedelta(hours=2)) == [tenant.webhook_secret]
