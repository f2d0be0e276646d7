"""The web server: a FastAPI REST API (accounts, projects, protocols, runs, live events) that
also serves the built single-page front end. Build the app with
:func:`cryostack.web.app.create_app`; run it with ``cryostack serve``."""
