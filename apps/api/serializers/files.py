from __future__ import annotations

from typing import Any

from rest_framework import serializers

from apps.core.wire import omit_unset
from apps.projects.models import File

# OpenAI leaves these out of a File until they are set (a file that never expires has none).
OMITTED_WHEN_UNSET = ("expires_at", "status_details")


class FileObjectSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    bytes = serializers.IntegerField()
    created_at = serializers.IntegerField()
    expires_at = serializers.IntegerField(
        required=False, help_text="Omitted for a file that does not expire."
    )
    filename = serializers.CharField()
    purpose = serializers.CharField()
    status = serializers.ChoiceField(choices=["uploaded", "processed", "error"])
    status_details = serializers.CharField(required=False, help_text="Omitted until there are details.")
    validation = serializers.DictField(allow_null=True, help_text="The validation report (extension).")


class FileUploadSerializer(serializers.Serializer):
    file = serializers.FileField()
    purpose = serializers.ChoiceField(choices=["fine-tune", "batch"])
    column_mapping = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text='JSON object mapping our fields to your columns, e.g. {"text": "review"}.',
    )


def file_object(file: File) -> dict[str, Any]:
    body = {
        "id": file.public_id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": int(file.created_at.timestamp()),
        "expires_at": int(file.expires_at.timestamp()) if file.expires_at else None,
        "filename": file.filename,
        "purpose": file.purpose,
        "status": file.status,
        "status_details": file.status_details or None,
        "validation": file.validation,
    }
    return omit_unset(body, OMITTED_WHEN_UNSET)
