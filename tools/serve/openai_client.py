"""Drives a running `blip2 serve` with the official `openai` Python package.

    pip install openai
    cargo run --release -p blip2-cli -- serve --model tests/fixtures/tiny-opt --port 9000 &
    python tools/serve/openai_client.py --base-url http://127.0.0.1:9000/v1 tests/fixtures/images/rgb_96x64.png

Checks that a chat completion, the same request streamed, and the model list work through a
client this project did not write; the streamed chunks must concatenate to the unstreamed text.
Exits non-zero on any mismatch or error.
"""

import argparse
import base64
import mimetypes
import sys

from openai import OpenAI


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("image")
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument("--question", default="what is in the picture?")
    args = parser.parse_args()

    mime = mimetypes.guess_type(args.image)[0] or "image/png"
    with open(args.image, "rb") as f:
        url = f"data:{mime};base64,{base64.b64encode(f.read()).decode()}"
    client = OpenAI(base_url=args.base_url, api_key=args.api_key)

    models = client.models.list()
    print("models:", [m.id for m in models.data])

    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": args.question},
    ]}]
    reply = client.chat.completions.create(model=models.data[0].id, messages=messages, max_tokens=12)
    text = reply.choices[0].message.content
    print("answer:", repr(text), "finish:", reply.choices[0].finish_reason, "usage:", reply.usage)

    caption = client.chat.completions.create(
        model=models.data[0].id,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
        max_tokens=12,
    )
    print("caption:", repr(caption.choices[0].message.content))

    streamed = ""
    for chunk in client.chat.completions.create(
        model=models.data[0].id, messages=messages, max_tokens=12, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            streamed += chunk.choices[0].delta.content
    print("streamed:", repr(streamed))
    if streamed != text:
        print("MISMATCH: the streamed text differs from the unstreamed one", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
