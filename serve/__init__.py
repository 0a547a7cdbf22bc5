"""An OpenAI-compatible HTTP server over the runtime (`cli.py serve`; README "Serving").

`protocol` (request checks and response bodies) and `scheduler` (queue, the continuous
batch, cancellation) use the standard library and the runtime only; `app` adds Starlette and
uvicorn (the `serve` extra). Nothing here imports torch or the exporter.
"""
