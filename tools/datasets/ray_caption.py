#!/usr/bin/env python3
"""Captions a generated image set with Ray Data and `blip2 serve`, one server per actor, and checks
the result against `blip2 caption`.

Ray's unit of work is a batch of rows, so the model lives in an actor: the actor's constructor
starts one `blip2 serve` process (the model loads once per actor) and each call posts the batch's
images to its /v1/caption concurrently, so the server batches them. Every image must come back
exactly once, with the caption `blip2 caption --json` gives it.

    pip install 'ray[data]'
    python tools/datasets/ray_caption.py --blip2 target/release/blip2 \
        --model tests/fixtures/tiny-opt --images 300 --actors 2 --out /tmp/ray-captions
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.request

import numpy as np
from PIL import Image


def make_images(folder, count, seed=0):
    """`count` small PNGs of random colour blocks, deterministic from `seed`."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(blocks).resize((64, 48), Image.NEAREST)
        path = folder / f"{k:05}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Captioner:
    """A Ray actor owning one `blip2 serve` process."""

    def __init__(self, blip2, model, max_tokens):
        self.port = free_port()
        self.max_tokens = max_tokens
        self.server = subprocess.Popen(
            [blip2, "serve", "--model", model, "--port", str(self.port), "--max-batch-size", "8"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline or self.server.poll() is not None:
                raise RuntimeError("blip2 serve did not become ready")
            time.sleep(0.2)
        self.pool = concurrent.futures.ThreadPoolExecutor(8)

    def caption(self, path):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/caption?max_tokens={self.max_tokens}",
            data=pathlib.Path(path).read_bytes(), headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=120) as r:
            answer = json.load(r)
        return answer["text"], answer["generations"][0]["token_ids"]

    def __call__(self, batch):
        results = list(self.pool.map(self.caption, batch["path"]))
        batch["text"] = np.array([t for t, _ in results], dtype=object)
        batch["token_ids"] = np.array([json.dumps(ids) for _, ids in results], dtype=object)
        batch["actor_pid"] = np.array([os.getpid()] * len(results))
        return batch

    def __del__(self):
        self.server.terminate()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blip2", required=True, help="the blip2 binary")
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--out", required=True, help="a folder for the images and the captions")
    args = parser.parse_args()
    blip2 = str(pathlib.Path(args.blip2).resolve())
    model = str(pathlib.Path(args.model).resolve())
    out = pathlib.Path(args.out)
    paths = make_images(out / "images", args.images)

    import ray
    ray.init(num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter()
    rows = (ray.data.from_items([{"path": p} for p in paths])
            .map_batches(Captioner, fn_constructor_args=(blip2, model, args.max_tokens),
                         compute=ray.data.ActorPoolStrategy(size=args.actors), batch_size=16, num_cpus=1)
            .take_all())
    elapsed = time.perf_counter() - start
    ray.shutdown()
    with open(out / "captions.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps({"image": row["path"], "text": row["text"],
                                "token_ids": json.loads(row["token_ids"])}) + "\n")

    by_path = {}
    for row in rows:
        assert row["path"] not in by_path, f"{row['path']} captioned twice"
        by_path[row["path"]] = row
    assert sorted(by_path) == sorted(paths), "images missing"
    actors = {row["actor_pid"] for row in rows}

    reference = subprocess.run(
        [blip2, "caption", "--model", model, "--json", "--max-new-tokens", str(args.max_tokens),
         "--batch-size", "8", *paths], check=True, capture_output=True, text=True)
    expected = {r["image"]: r["token_ids"] for r in json.loads(reference.stdout)["results"]}
    mismatched = [p for p in paths if json.loads(by_path[p]["token_ids"]) != expected[p]]
    assert not mismatched, f"{len(mismatched)} captions differ from blip2 caption, e.g. {mismatched[:3]}"
    print(json.dumps({"images": len(paths), "actors": len(actors), "seconds": round(elapsed, 2),
                      "images_per_second": round(len(paths) / elapsed, 1),
                      "identical_to_blip2_caption": True, "ray": ray.__version__}))


if __name__ == "__main__":
    main()
