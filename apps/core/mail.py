"""Customer text in email headers."""

from __future__ import annotations

import re

# Line breaks of every kind (Unicode's too) and the other control characters.
_BREAKS_AND_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def single_line(text: str) -> str:
    """`text` (an organization's name, say) made fit for a Subject: breaks and control characters
    become spaces, runs of spaces one. A line break in a header is either refused outright (Django's
    BadHeaderError, which fails the email) or, by a laxer mailer, taken for the start of a new
    header such as Bcc."""
    return " ".join(_BREAKS_AND_CONTROLS.sub(" ", text).split())
