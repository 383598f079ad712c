from __future__ import annotations

from typing import Any

from rest_framework import serializers

from apps.projects.models import File


class FileObjectSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    bytes = serializers.IntegerField()
    created_at = serializers.IntegerField()
    expires_at = serializers.IntegerField(allow_null=True)
    filename = serializers.CharField()
    purpose = serializers.CharField()
    status = serializers.ChoiceField(choices=["uploaded", "processed", "error"])
    status_details = serializers.CharField(allow_null=True)
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
    return {
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
