"""sa-serve: a loaded pipeline behind HTTP (FastAPI on uvicorn), its requests checked by the same
code as sa-run's before they wait for the model, one generation at a time on it."""
