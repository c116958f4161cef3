"""The control plane: the Admin API (Kong's paths, OpenAPI, tokens with roles) and the node's link to the config
store. ``control.ControlPlane`` is the piece the supervisor process runs; see docs/admin.md."""
