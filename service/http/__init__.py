"""The HTTP front end (FastAPI/ASGI): app, routes, gate, auth, fast path, server, workers and the page."""
