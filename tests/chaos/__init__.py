"""The chaos suite (docs/reliability.md, T3–T14): workers, the broker and PostgreSQL fail on purpose."""
