"""The streaming dataset validator: pure Python, no database."""

from __future__ import annotations

import itertools
import json
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps.projects.formats import FORMATS
from apps.projects.validation import MAX_ERRORS, PURPOSES, Report, summarize, validate_stream

FIXTURES = Path(__file__).parent / "fixtures"
HINT_UTF8 = 'save the file as UTF-8 (in Excel: Save As → "CSV UTF-8"); it may be in Latin-1 or Windows-1252'


def chunked(data: bytes, size: int = 7) -> Iterator[bytes]:
    # Small odd-sized chunks split lines, CRLFs and multi-byte characters across chunk boundaries.
    return (data[start : start + size] for start in range(0, len(data), size))


def validate(data: bytes, purpose: str = "fine-tune", **options: Any) -> Report:
    return validate_stream(chunked(data), purpose, **options)


def validate_fixture(name: str, purpose: str = "fine-tune", **options: Any) -> Report:
    return validate((FIXTURES / name).read_bytes(), purpose, filename=name, **options)


def errors(report: Report) -> list[tuple[int | None, str]]:
    return [(issue["line"], issue["message"]) for issue in report["errors"]]


def warnings(report: Report) -> list[tuple[int | None, str]]:
    return [(issue["line"], issue["message"]) for issue in report["warnings"]]


def csv_rows(rows: list[tuple[str, str]], header: str = "text,label") -> bytes:
    return (header + "\n" + "".join(f"{text},{label}\n" for text, label in rows)).encode()


def jsonl(*rows: object) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


# ---------------------------------------------------------------------------------------------
# Classification CSV
# ---------------------------------------------------------------------------------------------


def test_good_csv_is_valid():
    report = validate_fixture("classification_good.csv")

    assert report["valid"] is True
    assert report["format"] == "classification_csv"
    assert report["rows"] == 6
    assert report["errors"] == [] and report["error_count"] == 0
    assert report["warnings"] == [] and report["warning_count"] == 0
    assert report["stats"]["labels"] == {"negative": 3, "positive": 3}
    assert report["summary"] == "6 rows, classification CSV, 2 labels"


def test_report_has_the_documented_shape():
    report = validate_fixture("classification_good.csv")

    assert set(report) == {
        "valid",
        "format",
        "rows",
        "errors",
        "error_count",
        "warnings",
        "warning_count",
        "stats",
        "summary",
    }
    assert set(report["stats"]) == {"chars", "tokens", "labels"}
    assert set(report["stats"]["tokens"]) == {"min", "mean", "p95", "max", "total"}
    assert report["format"] in FORMATS
    assert PURPOSES == ("fine-tune", "batch", "evals")
    json.dumps(report)  # stored as-is in a JSONField


def test_utf8_bom_is_accepted():
    plain = validate_fixture("classification_good.csv")

    report = validate(b"\xef\xbb\xbf" + (FIXTURES / "classification_good.csv").read_bytes())

    assert report == plain


def test_crlf_line_endings_are_accepted():
    data = (FIXTURES / "quoted_newlines.csv").read_bytes().replace(b"\n", b"\r\n")

    report = validate(data)

    assert errors(report) == [(8, "label is empty")]
    assert report["rows"] == 5
    assert report["stats"]["labels"] == {"negative": 2, "positive": 2}


def test_quoted_newlines_keep_physical_line_numbers():
    report = validate_fixture("quoted_newlines.csv")

    # Records start on lines 2, 4, 5 and 8; the one on line 8 has an empty label.
    assert errors(report) == [(8, "label is empty")]
    assert report["errors"][0]["field"] == "label"
    assert report["errors"][0]["hint"] == "give every row a label, or remove the row"
    assert report["rows"] == 5
    assert report["summary"] == "1 error (first: line 8: label is empty)"


def test_empty_lines_are_skipped_and_still_counted_in_line_numbers():
    report = validate_fixture("empty_lines.csv")

    assert errors(report) == [(8, "text is empty")]
    assert report["rows"] == 5
    assert report["warnings"] == []


def test_numeric_labels_become_strings():
    report = validate_fixture("numeric_labels.csv")

    assert report["valid"] is True
    assert report["stats"]["labels"] == {"1": 2, "3": 2, "5": 2}


def test_numeric_labels_in_jsonl_become_strings_and_whole_floats_match_ints():
    report = validate_fixture("numeric_labels.jsonl")

    assert report["valid"] is True
    assert report["stats"]["labels"] == {"1": 2, "2": 2}


def test_column_mapping_reads_the_files_own_column_names():
    report = validate_fixture("mapped_columns.csv", column_mapping={"text": "review", "label": "sentiment"})

    assert report["valid"] is True
    assert report["rows"] == 4
    assert report["stats"]["labels"] == {"neg": 2, "pos": 2}
    assert warnings(report) == [(1, 'ignoring extra columns: "id"')]


def test_column_mapping_names_the_mapped_field_in_errors():
    data = b"review,sentiment\nGreat film,\n"

    report = validate(data, column_mapping={"text": "review", "label": "sentiment"})

    assert errors(report) == [(2, "sentiment is empty")]
    assert report["errors"][0]["field"] == "sentiment"


def test_column_mapping_applies_to_jsonl_keys():
    data = jsonl(
        {"review": "Great film", "stars": 5},
        {"review": "Awful film", "stars": 1},
    )

    report = validate(data, column_mapping={"text": "review", "label": "stars"})

    assert report["format"] == "classification_jsonl"
    assert report["valid"] is True
    assert report["stats"]["labels"] == {"1": 1, "5": 1}


def test_unknown_column_mapping_field_is_an_error():
    report = validate_fixture("classification_good.csv", column_mapping={"txt": "review"})

    assert errors(report) == [(None, 'unknown field "txt" in column_mapping')]
    assert report["errors"][0]["field"] == "column_mapping"


def test_a_column_mapping_to_nothing_is_an_error_and_ignored():
    report = validate_fixture("classification_good.csv", column_mapping={"text": ""})

    assert errors(report) == [(None, 'column_mapping["text"] must be a column name, got ""')]
    assert report["rows"] == 6


def test_a_header_without_a_label_column_is_read_as_unlabelled_texts_and_says_so():
    report = validate_fixture("missing_column.csv")

    assert report["valid"] is True
    assert report["format"] == "text_csv"
    assert warnings(report) == [
        (
            1,
            'no "label" column: read as unlabelled texts, usable as a distillation\'s unlabeled_file; '
            'columns found: "text", "category"',
        )
    ]
    assert report["warnings"][0]["hint"] == (
        'to fine-tune a classifier on this file, add a "label" column or map yours with column_mapping'
    )
    assert report["rows"] == 2
    assert "labels" not in report["stats"]
    assert report["summary"] == "2 rows, unlabelled text CSV, 1 warning"


def test_the_same_header_for_a_batch_file_is_still_not_unlabelled_texts():
    # Only fine-tune files can be unlabelled texts: a batch file is JSON Lines whatever it looks like.
    report = validate_fixture("missing_column.csv", purpose="batch")

    assert report["format"] == "batch_jsonl"
    assert report["valid"] is False


def test_unlabelled_csv_rows_are_checked_like_classification_texts():
    data = b"id,text\n1,a fine first text\n2,\n3\n4,a fine first text\n5,ok\n"

    report = validate(data)

    assert report["format"] == "text_csv"
    assert errors(report) == [
        (3, "text is empty"),
        (4, "row has 1 value but the text is in column 2"),
    ]
    assert warnings(report)[1:] == [(5, "duplicate of line 2"), (6, 'text is nearly empty ("ok")')]
    assert report["rows"] == 5


def test_unlabelled_jsonl():
    report = validate(jsonl({"text": "first text here"}, {"text": 7}, {"text": "third text", "id": 3}))

    assert report["format"] == "text_jsonl"
    assert errors(report) == [(2, "text must be a string, got number")]
    assert warnings(report) == [(3, 'ignoring extra keys: "id"')]
    assert report["stats"]["chars"]["max"] == 15


def test_a_column_mapping_names_the_text_of_unlabelled_jsonl():
    report = validate(jsonl({"review": "first text here"}), column_mapping={"text": "review"})

    assert report["format"] == "text_jsonl"
    assert report["valid"] is True


def test_missing_header_reads_the_first_row_as_the_header():
    report = validate_fixture("no_header.csv")

    assert errors(report) == [
        (
            1,
            'missing required columns "text" and "label"; columns found: "I loved this movie", "positive"',
        )
    ]
    assert report["errors"][0]["hint"].startswith("the first line is read as the header")
    assert report["rows"] == 2


def test_header_names_match_case_and_spaces_loosely():
    report = validate(b"Text , LABEL\nGood film,pos\nBad film,neg\n")

    assert report["valid"] is True


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"text;label\nGood film, really;pos\nBad film;neg\n", "reviews.csv"),
        (b"text\tlabel\nGood film, really\tpos\nBad film\tneg\n", "reviews.tsv"),
        (b"text\tlabel\nGood film, really\tpos\nBad film\tneg\n", "reviews.csv"),
    ],
)
def test_semicolon_and_tab_delimiters_are_detected(data: bytes, filename: str):
    report = validate(data, filename=filename)

    assert report["valid"] is True
    assert report["stats"]["labels"] == {"neg": 1, "pos": 1}


def test_rows_too_short_to_reach_the_label_are_errors():
    report = validate(b"text,label\nGood film,pos\nNo label at all\nBad film,neg\n")

    assert errors(report) == [(3, "row has 1 value but the text and label need 2")]


def test_rows_with_more_values_than_the_header_are_errors():
    report = validate(b"text,label\nGood film,pos\nToo,many,columns,here\nBad film,neg\nGreat film,pos\n")

    assert errors(report) == [(3, "row has 4 values but the header has 2 columns")]
    assert report["errors"][0]["hint"] == (
        'a text that contains a "," must be in double quotes, e.g. "Too, many, columns",label; '
        "otherwise remove the extra values"
    )
    assert report["error_count"] == 1 and report["valid"] is False
    assert report["rows"] == 4  # counted like any other bad row
    assert report["stats"]["labels"] == {"pos": 2, "neg": 1}  # "many" was never read as a label
    assert report["summary"] == "1 error (first: line 3: row has 4 values but the header has 2 columns)"


def test_a_row_too_long_for_a_semicolon_or_tab_header_names_its_delimiter():
    semicolons = validate(b"text;label\nGood film;pos\nBad;film;neg\nAwful film;neg\n")
    tabs = validate(b"text\tlabel\nGood film\tpos\nBad\tfilm\tneg\nAwful film\tneg\n", filename="a.tsv")

    assert errors(semicolons) == errors(tabs) == [(3, "row has 3 values but the header has 2 columns")]
    assert semicolons["errors"][0]["hint"] == (
        'a text that contains a ";" must be in double quotes, e.g. "Too; many; columns";label; '
        "otherwise remove the extra values"
    )
    assert tabs["errors"][0]["hint"] == (
        "a text that contains a tab must be in double quotes; otherwise remove the extra values"
    )


def test_an_unlabelled_row_with_more_values_than_the_header_is_an_error():
    report = validate(b"id,text\n1,a fine first text\n2,split,in two\n")

    assert report["format"] == "text_csv"
    assert errors(report) == [(3, "row has 3 values but the header has 2 columns")]


def test_a_quoted_field_with_commas_is_one_column():
    report = validate(b'text,label\n"Too, many, columns, here",pos\n"Bad, really bad",neg\n')

    assert report["valid"] is True
    assert report["stats"]["labels"] == {"neg": 1, "pos": 1}
    assert report["stats"]["chars"]["max"] == len("Too, many, columns, here")


def test_a_delimiter_at_the_end_of_every_row_is_one_warning_not_an_error_a_row():
    report = validate(b"text,label\nGood film,pos,\nBad film,neg,\nGreat film,pos, \n")

    assert report["valid"] is True
    assert report["rows"] == 3
    assert warnings(report)[0] == (
        2,
        'row ends with an empty column past the header (a "," at the end of the line)',
    )
    assert (
        report["warnings"][0]["hint"]
        == "empty values past the header are ignored, on this row and any later one"
    )
    assert [line for line, message in warnings(report) if "empty column" in message] == [2]
    assert report["stats"]["labels"] == {"pos": 2, "neg": 1}


def test_a_header_with_a_delimiter_at_its_end_is_one_warning():
    report = validate(b"text,label,\nGood film,pos,\nBad film,neg\nGreat film,pos,\n")

    assert report["valid"] is True
    assert warnings(report) == [
        (1, 'the header ends with an empty column (a "," at the end of the line)'),
        (3, 'label "neg" has only 1 example'),
    ]
    assert report["warnings"][0]["hint"] == (
        "it is ignored, and so are empty values under it; remove the trailing delimiter to silence this"
    )


def test_a_value_under_a_headers_trailing_empty_column_is_an_error():
    report = validate(b"text,label,\nGood film,pos,\nBad film,neg,oops\nAwful film,neg,\n")

    assert errors(report) == [(3, "row has 3 values but the header has 2 columns")]


def test_an_unclosed_quote_at_the_end_says_the_file_may_be_truncated():
    report = validate(b'text,label\nGood film,pos\nBad film,neg\n"never closed,neg')

    assert errors(report) == [(4, "a quoted field starting here is never closed; the file may be truncated")]


def test_an_unclosed_quote_stops_at_max_line_bytes_and_parsing_resumes():
    rows = "".join(f"row {i} is fine,{'pos' if i % 2 else 'neg'}\n" for i in range(20))
    data = f'text,label\n"never closed,pos\n{rows}'.encode()

    report = validate(data, max_line_bytes=100)

    # The record from line 2 swallows lines until it passes 100 bytes (line 7); line 8 parses again.
    assert errors(report) == [(2, "record runs past 100 bytes; a quoted field is probably never closed")]
    assert report["rows"] == 1 + 15


def test_malformed_quoting_is_reported_on_its_line():
    report = validate(b'text,label\nGood film,pos\n"quoted"tail,neg\nBad film,neg\n')

    assert errors(report) == [(3, "malformed CSV: ',' expected after '\"'")]
    assert report["rows"] == 3


# ---------------------------------------------------------------------------------------------
# Encoding, binary and empty files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10", "PNG image"),
        (b"PK\x03\x04\x14\x00\x06\x00", "ZIP archive; .xlsx and .docx files are ZIP archives too"),
        (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "GZIP archive"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF document"),
        (b"text,label\nhello\x00world,pos\n", "it contains NUL bytes"),
    ],
)
def test_binary_files_get_one_error(data: bytes, kind: str):
    report = validate(data, filename="reviews.csv")

    assert errors(report) == [(None, f"file looks binary ({kind})")]
    assert report["format"] is None
    assert report["rows"] == 0
    assert report["summary"] == f"1 error (first: file looks binary ({kind}))"


def test_a_nul_byte_after_the_first_kilobytes_is_reported_on_its_line():
    rows = [(f"review number {i}", "pos" if i % 2 else "neg") for i in range(1000)]
    data = csv_rows(rows) + b"bad\x00row,pos\n"

    report = validate(data)

    assert errors(report) == [(1002, "line contains a NUL byte")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "hi", "label": "a\\u0000b"}', "label contains a NUL character (\\u0000); remove it."),
        ('{"text": "hi", "label": "a\\ud800b"}', "label contains a lone surrogate (\\ud800); remove it."),
        (
            '{"messages": [{"role": "user", "content": "\\u0000"}]}',
            "messages[0].content contains a NUL character (\\u0000); remove it.",
        ),
        ('{"te\\u0000xt": "hi", "label": "a"}', "te\\u0000xt contains a NUL character (\\u0000); remove it."),
    ],
)
def test_a_json_escape_of_text_the_database_cannot_store_is_an_error_on_its_line(line: str, message: str):
    # the escape is six plain characters in the file, and NUL or a lone surrogate once decoded
    data = (
        jsonl({"text": "fine", "label": "a"}, {"text": "good", "label": "b"}).decode() + line + "\n"
    ).encode()

    report = validate(data)

    assert report["valid"] is False
    assert errors(report) == [(3, message)]
    assert report["errors"][0]["hint"] == "remove the character: it cannot be stored as text"
    json.dumps(report).encode()  # storable: the escapes stay escaped in the report


def test_utf16_files_are_told_to_save_as_utf8():
    report = validate("text,label\nGood,pos\n".encode("utf-16"))

    assert errors(report) == [(None, "the file is UTF-16 encoded")]
    assert report["errors"][0]["hint"] == HINT_UTF8


def test_latin1_file_gets_an_error_on_each_bad_line():
    data = "text,label\ncafé au lait,pos\nplain tea,neg\nnaïve film,pos\ngreen tea,pos\nblack coffee,neg\n"

    report = validate(data.encode("latin-1"))

    assert errors(report) == [
        (2, "not valid UTF-8: byte 0xE9 at byte offset 14 (column 4)"),
        (4, "not valid UTF-8: byte 0xEF at byte offset 44 (column 3)"),
    ]
    assert report["errors"][0]["hint"].startswith("save the file as UTF-8")
    assert report["rows"] == 5
    assert report["stats"]["labels"] == {"neg": 2, "pos": 1}


def test_empty_file():
    report = validate(b"")

    assert errors(report) == [(None, "the file is empty")]
    assert report["format"] is None
    assert report["summary"] == "1 error (first: the file is empty)"


def test_header_only_csv_has_no_rows():
    report = validate(b"text,label\n")

    assert errors(report) == [(None, "the file has no data rows")]
    assert report["rows"] == 0


def test_jsonl_of_blank_lines_has_no_rows():
    report = validate(b"\n  \n\r\n", filename="train.jsonl")

    assert errors(report) == [(None, "the file has no data rows")]


# ---------------------------------------------------------------------------------------------
# JSON Lines: syntax and format detection
# ---------------------------------------------------------------------------------------------


def test_invalid_json_is_reported_at_its_line():
    report = validate_fixture("invalid_json.jsonl")

    assert errors(report) == [
        (3, "invalid JSON: Expecting ',' delimiter (column 27)"),
        (5, "invalid JSON: Expecting property name enclosed in double quotes (column 48)"),
        (6, "expected a JSON object, got array"),
    ]
    assert report["rows"] == 7
    assert report["stats"]["labels"] == {"negative": 2, "positive": 2}


def test_truncated_last_line_says_so():
    report = validate_fixture("truncated.jsonl")

    assert errors(report) == [
        (3, "invalid JSON: Unterminated string starting at (column 10); the file may be truncated")
    ]
    assert report["errors"][0]["hint"] == "the last line stops mid-object: upload the complete file again"


def test_pretty_printed_json_gets_a_hint():
    report = validate(b'{\n  "text": "Good",\n  "label": "pos"\n}\n')

    assert errors(report)[0] == (
        1,
        "invalid JSON: Expecting property name enclosed in double quotes (column 2)",
    )
    assert report["errors"][0]["hint"] == (
        "the file looks pretty-printed: JSON Lines needs each object on a single line"
    )


def test_unknown_jsonl_format_says_which_fields_were_expected():
    report = validate(jsonl({"question": "2+2?", "answer": "4"}, {"question": "3+3?", "answer": "6"}))

    assert report["format"] is None
    assert errors(report) == [
        (
            1,
            'cannot tell the dataset format: expected "messages" (chat), "prompt" and "completion", '
            '"input", "preferred_output" and "non_preferred_output" (preference), "text" and "label" (classification), or "text" alone (unlabelled); keys found: "question", "answer"',
        )
    ]
    assert report["rows"] == 2


def test_good_classification_jsonl():
    report = validate_fixture("classification_good.jsonl")

    assert report["valid"] is True
    assert report["format"] == "classification_jsonl"
    assert report["summary"] == "4 rows, classification JSONL, 2 labels"


def test_classification_jsonl_checks_types():
    report = validate_fixture("classification_bad.jsonl")

    assert errors(report) == [
        (2, "text is empty"),
        (3, "text must be a string, got number"),
        (4, "label is missing"),
        (5, "label must be a string or a number, got array"),
        (6, "label must be a string or a number, got boolean"),
        (7, "label is empty"),
    ]
    assert [issue["field"] for issue in report["errors"]] == [
        "text",
        "text",
        "label",
        "label",
        "label",
        "label",
    ]


def test_extra_jsonl_keys_are_warned_about_once():
    data = jsonl(
        {"text": "Good film", "label": "pos", "id": 1},
        {"text": "Bad film", "label": "neg", "id": 2},
        {"text": "Fine film", "label": "pos", "source": "web"},
        {"text": "Poor film", "label": "neg"},
    )

    report = validate(data)

    assert warnings(report) == [(1, 'ignoring extra keys: "id"'), (3, 'ignoring extra keys: "source"')]


# ---------------------------------------------------------------------------------------------
# Chat and prompt/completion
# ---------------------------------------------------------------------------------------------


def test_good_chat_file():
    report = validate_fixture("chat_good.jsonl")

    assert report["valid"] is True
    assert report["format"] == "chat_jsonl"
    assert report["stats"]["messages"] == {"min": 2, "mean": 3.2, "max": 4}
    assert report["summary"] == "4 rows, chat JSONL"


def test_chat_errors():
    report = validate_fixture("chat_bad.jsonl")

    assert errors(report) == [
        (1, "no assistant message; each example needs at least one assistant reply to learn from"),
        (2, 'unknown role "bot"; expected one of system, user, assistant, tool'),
        (3, "weight is only allowed on assistant messages, not on a user message"),
        (4, "weight must be 0 or 1, got 0.5"),
        (5, "messages is empty"),
        (6, "content must be a string, got number"),
        (7, "messages must be a list, got string"),
    ]
    assert [issue["field"] for issue in report["errors"]] == [
        "messages",
        "messages[1].role",
        "messages[0].weight",
        "messages[1].weight",
        "messages",
        "messages[0].content",
        "messages",
    ]
    assert report["rows"] == 8


def test_chat_duplicates_ignore_key_order():
    first = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    reordered = {"messages": [{"content": "Hi", "role": "user"}, {"content": "Hello", "role": "assistant"}]}

    report = validate(jsonl(first, reordered))

    assert warnings(report) == [(2, "duplicate of line 1")]


def test_good_prompt_completion_file():
    report = validate_fixture("prompt_completion_good.jsonl")

    assert report["valid"] is True
    assert report["format"] == "prompt_completion_jsonl"
    assert report["summary"] == "3 rows, prompt/completion JSONL"


def test_prompt_completion_errors():
    report = validate_fixture("prompt_completion_bad.jsonl")

    assert errors(report) == [
        (2, "completion is empty"),
        (3, "prompt must be a string, got number"),
        (4, "completion is missing"),
    ]


# ---------------------------------------------------------------------------------------------
# Batch
# ---------------------------------------------------------------------------------------------


def test_good_batch_file():
    report = validate_fixture("batch_good.jsonl", purpose="batch")

    assert report["valid"] is True
    assert report["format"] == "batch_jsonl"
    assert report["stats"]["endpoints"] == {"/v1/chat/completions": 3}
    assert report["summary"] == "3 rows, batch JSONL"


def test_batch_errors_include_duplicate_custom_ids_and_bad_urls():
    report = validate_fixture("batch_bad.jsonl", purpose="batch")

    assert errors(report) == [
        (
            2,
            'url "/v1/moderations" is not supported; '
            "use one of /v1/chat/completions, /v1/completions, /v1/classifications, /v1/embeddings",
        ),
        (3, 'custom_id "request-1" is already used on line 1'),
        (4, 'method must be "POST", got "GET"'),
        (5, "body.model must be a model name, it is missing"),
        (6, "body must be an object, got string"),
    ]
    assert [issue["field"] for issue in report["errors"]] == [
        "url",
        "custom_id",
        "method",
        "body.model",
        "body",
    ]


def test_batch_purpose_reads_jsonl_even_when_the_content_looks_like_csv():
    report = validate(b"custom_id,url\nrequest-1,/v1/completions\n", purpose="batch")

    assert report["format"] == "batch_jsonl"
    assert errors(report) == [
        (1, "invalid JSON: Expecting value (column 1)"),
        (2, "invalid JSON: Expecting value (column 1)"),
    ]


def test_batch_with_several_urls_is_warned_about():
    body = {"model": "m", "prompt": "Hello"}
    data = jsonl(
        {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": body},
        {"custom_id": "b", "method": "POST", "url": "/v1/classifications", "body": body},
    )

    report = validate(data, purpose="batch")

    assert report["valid"] is True
    assert warnings(report) == [
        (None, 'requests use 2 different urls: "/v1/completions", "/v1/classifications"')
    ]


# ---------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------


def test_more_than_max_errors_caps_the_list_but_counts_them_all():
    data = csv_rows([(f"review {i}", "") for i in range(1500)])

    report = validate(data)

    assert report["error_count"] == 1500
    assert len(report["errors"]) == MAX_ERRORS
    assert report["errors"][-1]["line"] == MAX_ERRORS + 1
    assert report["summary"] == "1,500 errors (first: line 2: label is empty)"


def test_more_rows_than_max_rows_is_one_error_and_reading_stops():
    chunks_read = 0

    def endless_chunks() -> Iterator[bytes]:
        nonlocal chunks_read
        yield b"text,label\n"
        for chunk in itertools.count():
            chunks_read += 1
            assert chunks_read < 50, "kept reading after max_rows"
            yield "".join(f"review {chunk}-{row},{row % 2}\n" for row in range(100)).encode()

    report = validate_stream(endless_chunks(), "fine-tune", max_rows=500)

    assert errors(report) == [(502, "the file has more than 500 rows, the limit; validation stopped here")]
    assert report["rows"] == 500


@pytest.mark.parametrize("chunk_size", [7, 65536])
def test_a_line_longer_than_max_line_bytes_is_an_error(chunk_size: int):
    long_text = "word " * 2000
    data = jsonl(
        {"text": "Good film", "label": "pos"},
        {"text": long_text, "label": "pos"},
        {"text": "Bad film", "label": "neg"},
        {"text": "Poor film", "label": "neg"},
        {"text": "Fine film", "label": "pos"},
    )

    report = validate_stream(chunked(data, chunk_size), "fine-tune", max_line_bytes=1000)

    assert errors(report) == [(2, "line is 10,028 bytes, longer than the limit of 1,000 bytes")]
    assert report["rows"] == 5
    assert report["stats"]["labels"] == {"neg": 2, "pos": 2}


@pytest.mark.parametrize("chunk_size", [7, 65536])
def test_a_long_csv_line_is_an_error_and_later_lines_keep_their_numbers(chunk_size: int):
    data = csv_rows([("Good film", "pos"), ("x" * 5000, "pos"), ("Bad film", "neg"), ("", "neg")])

    report = validate_stream(chunked(data, chunk_size), "fine-tune", max_line_bytes=1000)

    assert errors(report) == [
        (3, "line is 5,004 bytes, longer than the limit of 1,000 bytes"),
        (5, "text is empty"),
    ]


def test_a_csv_field_past_the_csv_modules_limit_is_an_error():
    data = csv_rows([("Good film", "pos"), ("x" * 200_000, "pos"), ("Bad film", "neg")])

    report = validate(data)

    assert errors(report) == [(3, "a field is longer than 131,072 characters")]
    assert report["rows"] == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"text": ' + b"[" * 100_000 + b"}", "invalid JSON: nested too deeply"),
        (b'{"text": "Good", "label": 1' + b"0" * 5000 + b"}", "invalid JSON: a number is too long"),
    ],
)
def test_json_that_python_refuses_to_parse_is_an_error(line: bytes, message: str):
    report = validate(jsonl({"text": "Fine", "label": "pos"}) + line + b"\n")

    assert errors(report)[0] == (2, message)


def test_a_label_longer_than_a_class_name_is_an_error():
    report = validate(csv_rows([("Good film", "pos"), ("Bad film", "neg"), ("Odd film", "y" * 201)]))

    assert errors(report) == [(4, "label is 201 characters long; the limit is 200")]


def test_more_than_a_thousand_labels_is_an_error():
    data = csv_rows([(f"review {i}", f"label {i}") for i in range(1002)])

    report = validate(data)

    assert errors(report) == [(1002, "more than 1,000 distinct labels")]
    assert len(report["stats"]["labels"]) == 1000


def test_unknown_purpose_is_refused():
    with pytest.raises(ValueError, match="purpose 'assistants'"):
        validate(b"text,label\n", purpose="assistants")


# ---------------------------------------------------------------------------------------------
# Warnings and statistics
# ---------------------------------------------------------------------------------------------


def test_warnings_for_duplicates_conflicts_short_texts_and_single_examples():
    report = validate_fixture("warnings.csv")

    assert report["valid"] is True
    assert warnings(report) == [
        (4, "duplicate of line 2"),
        (5, 'same text as line 3 but a different label ("pos" here, "neg" there)'),
        (6, 'text is nearly empty ("ok")'),
        (9, 'label "meh" has only 1 example'),
    ]
    assert report["summary"] == "8 rows, classification CSV, 3 labels, 4 warnings"


def test_strong_class_imbalance_is_a_warning():
    rows = [(f"good film {i}", "pos") for i in range(22)] + [("bad film", "neg"), ("poor film", "neg")]

    report = validate(csv_rows(rows))

    assert warnings(report) == [
        (None, 'labels are strongly imbalanced: "pos" has 22 examples, "neg" has 2 (11.0x)')
    ]


def test_a_single_label_is_an_error():
    report = validate(csv_rows([("Good film", "pos"), ("Great film", "pos")]))

    assert errors(report) == [(None, 'found only 1 distinct label ("pos"); classification needs 2')]


def test_stats_on_a_known_file():
    report = validate_fixture("stats.csv")

    # Texts of 10, 20, ..., 200 characters; p95 is the nearest rank: the 19th of 20.
    assert report["stats"]["chars"] == {"min": 10, "mean": 105.0, "p95": 190, "max": 200, "total": 2100}
    assert report["stats"]["tokens"] == {"min": 3, "mean": 26.5, "p95": 48, "max": 50, "total": 530}
    assert report["stats"]["labels"] == {"even": 10, "odd": 10}


def test_invalid_rows_stay_out_of_the_stats():
    report = validate(csv_rows([("abcd", "pos"), ("", "pos"), ("abcdefgh", "neg")]))

    assert report["stats"]["chars"] == {"min": 4, "mean": 6.0, "p95": 8, "max": 8, "total": 12}


@pytest.mark.parametrize("name", sorted(path.name for path in FIXTURES.iterdir()))
def test_the_report_does_not_depend_on_chunk_boundaries(name: str):
    data = (FIXTURES / name).read_bytes()
    purpose = "batch" if name.startswith("batch") else "fine-tune"

    one_chunk = validate_stream([data], purpose, filename=name)
    byte_by_byte = validate_stream(chunked(data, 1), purpose, filename=name)

    assert byte_by_byte == one_chunk


def test_summarize_reads_like_status_details():
    report = validate_fixture("numeric_labels.csv")
    assert summarize(report) == "6 rows, classification CSV, 3 labels"

    report = validate(csv_rows([("Good film", "pos"), ("Bad film", "")]))
    assert summarize(report) == "2 errors (first: line 3: label is empty)"


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------


def test_a_50_mb_csv_streams_in_bounded_memory():
    # given ~50 MB of review-sized rows, arriving 64 KiB at a time as Django's File.chunks() does
    chunk_size, row_count = 64 * 1024, 140_000
    filler = b"an honest review that goes on about the plot, the cast and the score " * 5
    labels = (b"positive", b"negative", b"neutral")

    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        buffer = bytearray(b"text,label\n")
        for index in range(row_count):
            buffer += b'"review %d: %s",%s\n' % (index, filler, labels[index % 3])
            if len(buffer) >= chunk_size:
                chunk = bytes(buffer[:chunk_size])
                del buffer[:chunk_size]
                sent += len(chunk)
                yield chunk
        sent += len(buffer)
        yield bytes(buffer)

    # when
    tracemalloc.start()
    try:
        started = time.perf_counter()
        report = validate_stream(chunks(), "fine-tune", filename="big.csv")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # then
    assert report["valid"] is True, report["errors"][:3]
    assert report["rows"] == row_count
    assert sent > 50_000_000
    assert peak < 30 * 2**20, f"peak traced memory {peak / 2**20:.1f} MB"
    assert elapsed < 60, f"took {elapsed:.1f} s"


# ---------------------------------------------------------------------------------------------
# Preference (DPO) JSONL
# ---------------------------------------------------------------------------------------------


def preference(
    prompt: Any = "hi", preferred: Any = "hello there", rejected: Any = "go away"
) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": prompt}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": rejected}],
    }


def test_good_preference_jsonl():
    rows = [preference(f"question {i}") for i in range(3)]
    rows[1]["input"]["tools"] = [{"type": "function", "function": {"name": "f"}}]
    rows[1]["input"]["parallel_tool_calls"] = False
    report = validate(jsonl(*rows))

    assert report["format"] == "preference_jsonl"
    assert report["valid"] is True and report["errors"] == [] and report["warnings"] == []
    assert report["rows"] == 3
    assert report["summary"] == "3 rows, preference JSONL"
    # the prompt and both replies count: "question 0" + "hello there" + "go away"
    assert report["stats"]["chars"]["min"] == 10 + 11 + 7
    assert report["stats"]["messages"] == {"min": 1, "mean": 1.0, "max": 1}


def test_every_bad_preference_line_is_reported_with_its_line_number():
    rows = [
        preference(),  # 1: good
        {"preferred_output": preference()["preferred_output"], "non_preferred_output": []},  # 2
        {**preference(), "input": {"tools": []}},  # 3
        {**preference(), "input": {"messages": []}},  # 4
        {**preference(), "input": "hi"},  # 5
        {
            **preference(),
            "input": {
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
            },
        },  # 6
        {**preference(), "preferred_output": {"role": "assistant", "content": "x"}},  # 7
        {**preference(), "preferred_output": [{"role": "user", "content": "x"}]},  # 8
        {
            **preference(),
            "non_preferred_output": [
                {"role": "assistant", "content": "a"},
                {"role": "assistant", "content": "b"},
            ],
        },  # 9
        {**preference(), "non_preferred_output": [{"role": "assistant", "content": 3}]},  # 10
        preference(preferred="same", rejected="same"),  # 11
        {**preference(), "preferred_output": [{"content": "x"}]},  # 12
        {**preference(), "non_preferred_output": [{"role": "assistant", "content": "  "}]},  # 13
        {**preference(), "input": {"messages": [{"role": "robot", "content": "hi"}]}},  # 14
        {**preference(), "non_preferred_output": ["text"]},  # 15
    ]
    report = validate(jsonl(*rows))

    assert report["format"] == "preference_jsonl"
    assert report["valid"] is False
    assert errors(report) == [
        (2, "input is missing"),
        (2, "non_preferred_output must hold exactly 1 message, got 0"),
        (3, "input.messages is missing"),
        (4, "input.messages is empty"),
        (5, "input must be an object, got string"),
        (6, 'the last input message must be from the user, not "assistant"'),
        (7, "preferred_output must be a list of one message, got object"),
        (8, 'role is "user"; the reply must be an assistant message'),
        (9, "non_preferred_output must hold exactly 1 message, got 2"),
        (10, "content must be a string, got number"),
        (11, "preferred_output and non_preferred_output have the same content"),
        (12, "role is missing; the reply must be an assistant message"),
        (13, "content is empty"),
        (14, 'unknown role "robot"; expected one of system, user, assistant, tool'),
        (15, "message must be an object, got string"),
    ]
    assert [issue["field"] for issue in report["errors"]] == [
        "input",
        "non_preferred_output",
        "input.messages",
        "input.messages",
        "input",
        "input.messages[1].role",
        "preferred_output",
        "preferred_output[0].role",
        "non_preferred_output",
        "non_preferred_output[0].content",
        "non_preferred_output",
        "preferred_output[0].role",
        "non_preferred_output[0].content",
        "input.messages[0].role",
        "non_preferred_output[0]",
    ]
    assert report["errors"][10]["hint"] == (
        "a pair teaches only where the two replies differ: give a worse reply as non_preferred_output"
    )


def test_preference_rows_warn_of_extra_keys_and_repeats():
    row = {
        **preference(),
        "note": "x",
        "input": {"messages": [{"role": "user", "content": "hi"}], "extra": 1},
    }
    report = validate(jsonl(row, row))

    assert report["valid"] is True
    assert warnings(report) == [
        (1, 'ignoring extra keys: "note"'),
        (1, 'ignoring extra keys: "input.extra"'),
        (2, "duplicate of line 1"),
    ]


def test_an_evals_file_is_checked_row_by_row() -> None:
    data = b"\n".join(
        [
            b'{"item": {"q": "a"}}',
            b'{"q": "b"}',
            b'{"item": {"q": "c"}, "sample": "x"}',
            b'{"item": {"q": "d"}, "sample": {"output_text": "d"}, "extra": 1}',
            b"[1]",
        ]
    )
    report = validate(data, "evals")
    assert report["format"] == "eval_jsonl" and report["rows"] == 5
    assert [(e["line"], e["field"], e["message"]) for e in report["errors"]] == [
        (2, "item", "item must be an object, it is missing"),
        (3, "sample", "sample must be an object, got string"),
        (5, None, "expected a JSON object, got array"),
    ]
    # keys besides item and sample are named once, on the line where each first appears
    assert [(w["line"], w["message"]) for w in report["warnings"]] == [
        (2, 'ignoring extra keys: "q"'),
        (4, 'ignoring extra keys: "extra"'),
    ]
    assert all(w["hint"] == "only item and sample are read" for w in report["warnings"])
