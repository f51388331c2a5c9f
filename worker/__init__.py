"""Workers: fetch, decode, embed and index stages, and the Celery tasks over them."""
