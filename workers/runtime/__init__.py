"""The ML runtime: plain Python + torch, never Django (docs/architecture.md, "The Django ↔ ML boundary")."""
