"""The ML runtime: plain Python + torch, never Django (DESIGN.md §3)."""
