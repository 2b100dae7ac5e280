"""The bank behind an HTTP API: FastAPI on uvicorn (asyncio), the engine opened in the
app's lifespan. Run it with ``python -m examples.fastapi_bank --data bank-data/``."""
