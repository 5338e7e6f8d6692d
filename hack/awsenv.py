"""Shared helpers for the local-stack tools in hack/: boto3 clients for moto.

Owns: how the hack/ scripts build boto3 clients against a local endpoint
(dummy credentials, no retries hiding faults, short timeouts) and the
ISO-8601 millisecond timestamp format their logs use.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any

import boto3
from botocore.config import Config

# moto's default account; ECR repository URIs are built from it.
DEFAULT_ACCOUNT_ID = "123456789012"


def client(service: str, endpoint: str, region: str, *, retries: int = 3) -> Any:
    """A boto3 client for `service` talking to the local `endpoint`.

    Credentials come from the environment when set, else moto-friendly dummies.
    """
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
        config=Config(
            retries={"max_attempts": retries, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


def iso_now() -> str:
    """Current UTC time as ISO 8601 with milliseconds, e.g. 2026-11-28T10:03:10.123Z."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
