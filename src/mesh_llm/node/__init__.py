"""The node: its models as slots, the API's router over the mesh, the status, the home."""
