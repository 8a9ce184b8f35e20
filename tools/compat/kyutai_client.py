"""Talk to a moshi-rs server the way Kyutai's own Python client (moshi.client, PyPI moshi 0.2.13)
does, with its Opus stack (sphn: libopus + Ogg): PCM blocks of 1920 samples through
sphn.OpusStreamWriter, sent as b"\\x01" + bytes; received audio through sphn.OpusStreamReader,
text printed as it comes. No sound device: the input is a wav (or a tone), the reply is counted.

    python tools/compat/kyutai_client.py --url ws://127.0.0.1:8998/api/chat --seconds 8

Exit status 0 when audio decoded by sphn came back and the server never sent an error.
"""
import argparse
import asyncio
import json
import sys
import time

import aiohttp
import numpy as np
import sphn

SR = 24000
FRAME = 1920


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="ws://127.0.0.1:8998/api/chat")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--wav", default=None)
    ap.add_argument("--insecure", action="store_true", help="accept a self-signed certificate (wss)")
    args = ap.parse_args()
    if args.wav:
        pcm, _ = sphn.read(args.wav, sample_rate=SR)
        pcm = pcm[0]
    else:
        t = np.arange(int(SR * args.seconds)) / SR
        pcm = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    writer = sphn.OpusStreamWriter(SR)
    reader = sphn.OpusStreamReader(SR)
    got = {"audio_messages": 0, "samples": 0, "text": "", "kinds": {}, "errors": []}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(args.url, ssl=False if args.insecure else None) as ws:

            async def send():
                n = int(args.seconds * SR / FRAME)
                start = time.monotonic()
                for i in range(n):
                    block = pcm[(i * FRAME) % len(pcm):][:FRAME]
                    if len(block) < FRAME:
                        block = np.pad(block, (0, FRAME - len(block)))
                    b = writer.append_pcm(block.astype(np.float32))
                    if len(b) > 0:
                        await ws.send_bytes(b"\x01" + b)
                    await asyncio.sleep(max(0.0, start + (i + 1) * FRAME / SR - time.monotonic()))
                await asyncio.sleep(1.0)
                await ws.close()

            async def recv():
                async for m in ws:
                    if m.type != aiohttp.WSMsgType.BINARY:
                        continue
                    kind, payload = m.data[0], m.data[1:]
                    got["kinds"][kind] = got["kinds"].get(kind, 0) + 1
                    if kind == 1:
                        got["audio_messages"] += 1
                        got["samples"] += reader.append_bytes(payload).shape[-1]
                    elif kind == 2:
                        got["text"] += payload.decode()
                    elif kind == 5:
                        got["errors"].append(payload.decode())

            await asyncio.gather(send(), recv())
    print(json.dumps(got))
    return 0 if got["samples"] > 0 and not got["errors"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
