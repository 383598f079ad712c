"""T33: hostile uploads (binary content, NUL bytes, huge lines, traversal names, compression
bombs) and CSV injection in every CSV export the product offers."""

from __future__ import annotations

import csv
import gzip
import io
import json
import time
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from apps.billing.models import UsageRecord
from apps.jobs.models import Job, JobKind, JobStatus
from apps.projects import actions
from apps.projects.models import File, FilePurpose
from tests.security.test_bola import stored_file
from workers.tasks import validate_file

pytestmark = pytest.mark.usefixtures("media")


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 8
FORMULAS = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-1+1", "@SUM(A1)", "\tx", "\rx"]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def upload(api: Any, name: str, data: bytes, purpose: str = "fine-tune") -> dict[str, Any]:
    response = api.post(
        "/v1/files", {"purpose": purpose, "file": SimpleUploadedFile(name, data)}, format="multipart"
    )
    assert response.status_code == 200, response.content
    return response.json()


def validated(api: Any, name: str, data: bytes, purpose: str = "fine-tune") -> dict[str, Any]:
    """Upload, then run the validation task the commit would have queued, in this process."""
    file_id = upload(api, name, data, purpose)["id"]
    validate_file(file_id)
    return api.get(f"/v1/files/{file_id}").json()


def issues(body: dict[str, Any]) -> list[tuple[int | None, str]]:
    return [(issue["line"], issue["message"]) for issue in body["validation"]["errors"]]


# --- Content is sniffed, not trusted from the name ------------------------------------------------
def test_a_png_renamed_csv_is_an_error_with_a_clear_report(api: Any) -> None:
    body = validated(api, "data.csv", PNG)
    assert body["status"] == "error"
    assert issues(body) == [(None, "file looks binary (PNG image)")]
    assert "text file" in body["validation"]["errors"][0]["hint"]


def test_a_csv_named_png_is_still_read_as_a_csv(api: Any) -> None:
    body = validated(api, "data.png", b"text,label\ngood film,pos\nbad film,neg\n")
    assert body["status"] == "processed" and body["validation"]["format"] == "classification_csv"


def test_nul_bytes_are_an_error(api: Any) -> None:
    early = validated(api, "data.csv", b"text,label\nhello\x00world,pos\n")
    assert early["status"] == "error"
    assert issues(early) == [(None, "file looks binary (it contains NUL bytes)")]
    # Past the sniffed head, the line that holds the NUL is named.
    late = validated(api, "data.csv", b"text,label\n" + b"fine text,pos\n" * 10_000 + b"bad\x00text,neg\n")
    assert late["status"] == "error"
    assert (10_002, "line contains a NUL byte") in issues(late)


def test_a_2_mib_line_is_an_error_for_that_line(api: Any) -> None:
    line = b"x" * (2 * 1024 * 1024)
    body = validated(api, "data.csv", b"text,label\n" + line + b",pos\ngood,neg\n")
    assert body["status"] == "error"
    [(number, message)] = [(n, m) for n, m in issues(body) if "longer than the limit" in m]
    assert number == 2 and f"{len(line) + 4:,} bytes" in message


# --- Names are never paths ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "basename"),
    [
        ("../../etc/passwd.csv", "passwd.csv"),
        ("..\\..\\x.csv", "x.csv"),
        ("/etc/cron.d/x.csv", "x.csv"),
        ("a/../../b.csv", "b.csv"),
        ("..\\", "upload"),
    ],
)
def test_a_traversal_filename_is_stored_under_our_own_key(
    api: Any, alice_project: Any, media: Path, tmp_path: Path, name: str, basename: str
) -> None:
    data = b"text,label\nhi,a\n"
    # Through the API (Django's multipart parser already cuts paths) and through the action itself,
    # which must hold on its own.
    raw = (
        f'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--B\r\nContent-Disposition: '
        f'form-data; name="file"; filename="{name}"\r\nContent-Type: text/csv\r\n\r\n'.encode()
        + data
        + b"\r\n--B--\r\n"
    )
    response = api.generic("POST", "/v1/files", raw, content_type="multipart/form-data; boundary=B")
    stored = []
    if response.status_code == 200:
        assert response.json()["filename"] == basename
        stored.append(File.objects.get(public_id=response.json()["id"]))
    else:  # Django's parser drops a file whose whole name is a path: "missing file", nothing stored
        assert response.status_code == 400 and response.json()["error"]["param"] == "file"
    upload_named = SimpleUploadedFile("x", data)
    upload_named._name = name  # type: ignore[attr-defined]  # past Django's basename(), as a handler could
    stored.append(actions.upload_file(alice_project, upload_named, "fine-tune"))
    for file in stored:
        organization = alice_project.organization.public_id
        assert file.content.name == f"files/{organization}/{file.public_id}"
        assert ".." not in file.content.name
        assert file.filename == basename
        assert Path(file.content.path).resolve().is_relative_to(media.resolve())
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(media)]
    assert outside == []


# --- Archives are binary: never opened, never expanded --------------------------------------------------
def gzip_bomb(compressed_bytes: int) -> tuple[bytes, int]:
    """About `compressed_bytes` of gzip that expands ~1000-fold: one member of 10 MB of zeros,
    repeated (a gzip file may hold many members), so building it takes milliseconds."""
    member = gzip.compress(b"\0" * (10 * 1024 * 1024), compresslevel=9)
    copies = max(1, compressed_bytes // len(member))
    return member * copies, copies * 10 * 1024 * 1024


def test_a_gzip_bomb_is_reported_as_binary_and_never_expanded(api: Any, media: Path) -> None:
    data, expanded = gzip_bomb(10 * 1024 * 1024)
    assert expanded >= 10 * 1024**3  # 10 GB, were anyone to decompress it
    file_id = upload(api, "data.csv.gz", data)["id"]
    # when
    tracemalloc.start()
    started = time.monotonic()
    validate_file(file_id)
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # then
    body = api.get(f"/v1/files/{file_id}").json()
    assert body["status"] == "error"
    assert issues(body) == [(None, "file looks binary (GZIP archive)")]
    assert elapsed < 10 and peak < 50 * 1024 * 1024, (elapsed, peak)
    file = File.objects.get(public_id=file_id)
    assert file.bytes == len(data) and Path(file.content.path).stat().st_size == len(data)
    assert sum(p.stat().st_size for p in media.rglob("*") if p.is_file()) == len(data)
    content = api.get(f"/v1/files/{file_id}/content")
    assert "Content-Encoding" not in content
    content.close()


def test_zip_archives_are_reported_as_binary_and_never_extracted(api: Any, media: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as archive:
        archive.writestr("inner.csv", "text,label\nhi,a\n")
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("../../escaped.csv", "text,label\nhi,a\n")
        archive.writestr("nested.zip", inner.getvalue())
        archive.writestr("zeros.csv", b"\0" * (50 * 1024 * 1024))
    for purpose in ("fine-tune", "batch"):
        body = validated(api, "data.csv", outer.getvalue(), purpose)
        assert body["status"] == "error"
        assert issues(body) == [
            (None, "file looks binary (ZIP archive; .xlsx and .docx files are ZIP archives too)")
        ]
    names = {p.name for p in media.parent.rglob("*")}
    assert not names & {"escaped.csv", "inner.csv", "nested.zip", "zeros.csv"}


# --- CSV injection in every export ------------------------------------------------------------------
def read_csv(response: Any) -> list[list[str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith("attachment;")
    raw = b"".join(response.streaming_content) if response.streaming else response.content
    return list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))


def assert_no_formula_cells(rows: list[list[str]]) -> None:
    for row in rows:
        for cell in row:
            assert not cell.startswith(FORMULA_STARTS), f"cell {cell!r} would run as a formula"


def test_the_usage_export_defuses_formulas(alice: Any, alice_client: Any, alice_org: Any) -> None:
    for text in FORMULAS:
        project = actions.create_project(alice_org, alice, text)
        key, _ = actions.create_api_key(project, text, alice)
        job = Job.objects.create(
            kind=JobKind.GENERATION,
            organization=alice_org,
            project=project,
            model_name=text,
            status=JobStatus.SUCCEEDED,
            finished_at=timezone.now(),
        )
        UsageRecord.objects.create(
            organization=alice_org,
            project=project,
            api_key=key,
            job=job,
            model_name=text,
            unit="input_tokens",
            quantity=10,
            cost=1,
        )
    rows = read_csv(alice_client.get("/usage/export.csv"))
    assert len(rows) == 1 + len(FORMULAS)
    assert_no_formula_cells(rows)
    cells = {cell for row in rows for cell in row}
    assert all(f"'{text}" in cells for text in FORMULAS)  # the model column keeps each one as given


def test_the_batch_results_export_defuses_formulas(alice_client: Any, alice_project: Any) -> None:
    requests = [
        {
            "custom_id": f"{text}-id",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "tiny-gpt2", "messages": [{"role": "user", "content": text}]},
        }
        for text in FORMULAS
    ]
    outputs = [
        {
            "id": "r",
            "custom_id": f"{text}-id",
            "error": None,
            "response": {
                "status_code": 200,
                "body": {
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": text}
                    ]
                },
            },
        }
        for text in FORMULAS[:3]
    ]
    errors = [
        {
            "id": "r",
            "custom_id": f"{text}-id",
            "error": None,
            "response": {"status_code": 400, "body": {"error": {"message": text}}},
        }
        for text in FORMULAS[3:]
    ]

    def jsonl(rows: list[dict[str, Any]]) -> bytes:
        return "".join(json.dumps(row) + "\n" for row in rows).encode()

    source = stored_file(alice_project, "in.jsonl", jsonl(requests), FilePurpose.BATCH, "batch_jsonl")
    output = stored_file(alice_project, "out.jsonl", jsonl(outputs), FilePurpose.BATCH_OUTPUT)
    error = stored_file(alice_project, "err.jsonl", jsonl(errors), FilePurpose.BATCH_OUTPUT)
    job = Job.objects.create(
        kind=JobKind.BATCH,
        organization=alice_project.organization,
        project=alice_project,
        status=JobStatus.SUCCEEDED,
        training_file=source,
        model_name="",
        request={"endpoint": "/v1/chat/completions", "input_file_id": source.public_id},
        result={"output_file_id": output.public_id, "error_file_id": error.public_id},
        progress={"total": 6, "completed": 3, "failed": 3},
    )
    rows = read_csv(
        alice_client.get(f"/projects/{alice_project.public_id}/batches/{job.public_id}/results.csv")
    )
    assert len(rows) == 1 + len(FORMULAS)
    assert_no_formula_cells(rows)
    cells = {cell for row in rows for cell in row}
    assert all(f"'{text}" in cells for text in FORMULAS)


# --- Model artifacts (T34): pickles are never loaded, forged safetensors headers never read ----------
class Canary:
    """Unpickling this runs code: it writes the file at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return exec, (f"open({str(self.path)!r}, 'w').write('pwned')",)


def armed_pickle(canary: Path) -> bytes:
    import pickle

    data = pickle.dumps(Canary(canary))
    # The control: this payload really does run when unpickled.
    probe = canary.with_name("probe")
    pickle.loads(pickle.dumps(Canary(probe)))  # noqa: S301
    assert probe.exists()
    probe.unlink()
    return data


def model_dir(tmp_path: Path, source: Path, *, weights: bool) -> Path:
    """A copy of a tiny model's config and tokenizer, with or without its safetensors weights."""
    import shutil

    target = tmp_path / "model"
    target.mkdir()
    for path in source.iterdir():
        if weights or not path.name.endswith(".safetensors"):
            shutil.copy(path, target / path.name)
    return target


def test_a_pickle_only_model_is_refused_and_never_unpickled(tmp_path: Path, tiny_bert_dir: Path) -> None:
    from workers.runtime.models import ModelCache, load_model

    canary = tmp_path / "canary"
    directory = model_dir(tmp_path, tiny_bert_dir, weights=False)
    (directory / "pytorch_model.bin").write_bytes(armed_pickle(canary))
    for load in (
        lambda: load_model(str(directory), "cpu"),
        lambda: ModelCache(10**9, "cpu").get(str(directory)),
    ):
        with pytest.raises(ValueError, match="format not allowed; use safetensors"):
            load()
    assert not canary.exists()


def test_a_pickle_beside_safetensors_weights_is_ignored(tmp_path: Path, tiny_bert_dir: Path) -> None:
    from workers.runtime.models import load_model

    canary = tmp_path / "canary"
    directory = model_dir(tmp_path, tiny_bert_dir, weights=True)
    for name in ("pytorch_model.bin", "training_args.bin", "optimizer.pt", "rng_state.pth"):
        (directory / name).write_bytes(armed_pickle(canary))
    assert load_model(str(directory), "cpu").task == "classification"
    assert not canary.exists()


def test_a_pickle_named_safetensors_is_refused(tmp_path: Path, tiny_bert_dir: Path) -> None:
    from workers.runtime.models import load_model

    canary = tmp_path / "canary"
    directory = model_dir(tmp_path, tiny_bert_dir, weights=False)
    (directory / "model.safetensors").write_bytes(armed_pickle(canary))
    with pytest.raises(Exception):  # noqa: B017  (safetensors' own error type)
        load_model(str(directory), "cpu")
    assert not canary.exists()


def test_a_safetensors_header_claiming_200_mb_is_refused_without_allocating_it(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    from workers.runtime.models import ModelCache, load_model

    directory = model_dir(tmp_path, tiny_bert_dir, weights=False)
    (directory / "model.safetensors").write_bytes((200_000_000).to_bytes(8, "little") + b"{}")
    load_model(str(tiny_bert_dir), "cpu")  # warm the imports, so the measurement below is the load's alone
    for load in (
        lambda: load_model(str(directory), "cpu"),
        lambda: ModelCache(10**9, "cpu").get(str(directory)),
    ):
        tracemalloc.start()
        started = time.monotonic()
        with pytest.raises(Exception, match="(?i)header"):
            load()
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert elapsed < 5 and peak < 20 * 1024 * 1024, (elapsed, peak)
