"""The A/B workbench page at ``/`` (static files shipped as package data, no build step) and the
offline API documentation (``/docs``, ``/redoc``) from locally served assets."""
