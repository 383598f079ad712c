"""Contract tests: our real /v1/ responses held against OpenAI's published OpenAPI spec.

`openai-openapi.yaml` is OpenAI's spec (version 2.3.0), copied unchanged from the repository
github.com/openai/openai-openapi, branch `main`, file `openapi.yaml`, commit
f85dbe223d40e1a31cba812ab2d755c7e98a92a3. To update it, copy a newer `openapi.yaml` from there,
change the commit above, and run tests/contract.
"""
