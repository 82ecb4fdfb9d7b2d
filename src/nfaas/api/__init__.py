"""HTTP: the gateway's invoke path, the management API, auth, metrics and the OpenAPI document."""
