"""The HTTP intake (docs/http.md): the SAS contacts API and the Person Import upload,
served by the daemon through the same pipeline as a drop."""
