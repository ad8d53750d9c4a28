"""The server sft-serve replaces, for bench.load: FastAPI + uvicorn + transformers.pipeline, no batching.

POST /predict takes {"inputs": "text" | ["text", ...]} and answers in sft-serve's shape (all labels,
best first), so one load generator drives both. The endpoint is a plain `def`, so FastAPI runs each
request on its thread pool, the way such servers are usually written.

    python -m bench.baseline_server CHECKPOINT [--port 8081]
"""

import argparse
import os


def build_app(checkpoint: str, threads: int | None = None):
    import torch
    from fastapi import FastAPI
    from pydantic import BaseModel
    from transformers import pipeline

    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    classify = pipeline(
        "text-classification", model=checkpoint, tokenizer=checkpoint, top_k=None, device="cpu"
    )
    app = FastAPI()

    class PredictRequest(BaseModel):
        inputs: str | list[str]

    @app.post("/predict")
    def predict(request: PredictRequest):
        with torch.inference_mode():
            out = classify(request.inputs, truncation=True)
        return out if isinstance(request.inputs, list) else out[0]  # a string gets [[...]] from the pipeline

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    p.add_argument("--threads", type=int)
    a = p.parse_args(argv)
    uvicorn.run(build_app(a.checkpoint, a.threads), host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
