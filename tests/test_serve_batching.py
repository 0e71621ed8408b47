"""The dynamic batcher and the server's image decoding, without a model or a server."""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'padt[serve]'")

from padt.serve.batching import DynamicBatcher, QueueFull, ShuttingDown
from padt.serve.images import ImageLimits, ImageRejected, bytes_from_string, decode_image


class Recorder:
    """A run_batch that records its batches; ``gate`` (if set) holds the worker until released."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list] = []
        self.gate = gate
        self.started = threading.Event()

    def __call__(self, items: list) -> list:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.batches.append(list(items))
        return [("done", item) for item in items]


def run(coro):
    return asyncio.run(coro)


async def _submit_all(batcher, items_keys, timeout=None):
    return await asyncio.gather(
        *(batcher.submit(i, k, timeout) for i, k in items_keys), return_exceptions=True
    )


def test_jobs_that_arrive_together_share_a_batch_up_to_the_limit():
    rec = Recorder()

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=4, max_wait_s=0.2)
        await batcher.start()
        results = await _submit_all(batcher, [(i, "k") for i in range(10)])
        await batcher.stop()
        return results

    results = run(main())
    assert [r for r, _ in results] == [("done", i) for i in range(10)]  # each job gets its own result
    assert [len(b) for b in rec.batches] == [4, 4, 2]
    assert [info.batch_size for _, info in results] == [4] * 8 + [2] * 2
    assert sorted(i for b in rec.batches for i in b) == list(range(10))


def test_jobs_with_different_keys_never_share_a_batch():
    rec = Recorder()
    keys = ["a", "b", "a", "c", "b", "a", "a", "c"]

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=8, max_wait_s=0.2)
        await batcher.start()
        results = await _submit_all(batcher, list(enumerate(keys)))
        await batcher.stop()
        return results

    results = run(main())
    assert [r for r, _ in results] == [("done", i) for i in range(len(keys))]
    for batch in rec.batches:
        assert len({keys[i] for i in batch}) == 1, f"mixed keys in {batch}"
    # the oldest job's key goes first, and all of a key's waiting jobs go together
    assert rec.batches == [[0, 2, 5, 6], [1, 4], [3, 7]]


def test_a_lone_job_waits_at_most_max_wait():
    rec = Recorder()

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=8, max_wait_s=0.05)
        await batcher.start()
        result, info = await asyncio.wait_for(batcher.submit("x"), 5)
        await batcher.stop()
        return result, info

    result, info = run(main())
    assert result == ("done", "x") and info.batch_size == 1
    assert info.queued_s >= 0.04  # it did wait for company


def test_queue_full_and_retry_after():
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=1, max_wait_s=0, max_queue=2)
        await batcher.start()
        first = asyncio.create_task(batcher.submit("running"))
        while not rec.started.is_set():
            await asyncio.sleep(0.005)
        queued = [asyncio.create_task(batcher.submit(f"q{i}")) for i in range(2)]
        await asyncio.sleep(0.05)
        assert batcher.queue_length == 2 and batcher.in_flight == 1
        with pytest.raises(QueueFull) as full:
            await batcher.submit("rejected")
        gate.set()
        done = await asyncio.gather(first, *queued)
        await batcher.stop()
        return full.value, done

    full, done = run(main())
    assert full.retry_after >= 1
    assert [r for r, _ in done] == [("done", "running"), ("done", "q0"), ("done", "q1")]
    assert all("rejected" not in b for b in rec.batches)


def test_a_timed_out_job_leaves_the_queue_and_never_runs():
    gate = threading.Event()
    rec = Recorder(gate)

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=1, max_wait_s=0, max_queue=4)
        await batcher.start()
        first = asyncio.create_task(batcher.submit("running"))
        while not rec.started.is_set():
            await asyncio.sleep(0.005)
        with pytest.raises(TimeoutError):
            await batcher.submit("late", timeout=0.05)
        assert batcher.queue_length == 0
        gate.set()
        await first
        await batcher.stop()

    run(main())
    assert rec.batches == [["running"]]


def test_a_failing_job_fails_alone():
    def run_batch(items):
        if "bad" in items:
            raise ValueError("bad item")
        return [item.upper() for item in items]

    async def main():
        batcher = DynamicBatcher(run_batch, max_batch_size=8, max_wait_s=0.1)
        await batcher.start()
        results = await _submit_all(batcher, [("a", 0), ("bad", 0), ("c", 0)])
        await batcher.stop()
        return results

    a, bad, c = run(main())
    assert a[0] == "A" and c[0] == "C"
    assert isinstance(bad, ValueError)


def test_stop_finishes_taken_jobs_and_refuses_new_ones():
    rec = Recorder()

    async def main():
        batcher = DynamicBatcher(rec, max_batch_size=2, max_wait_s=0.05)
        await batcher.start()
        jobs = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
        await asyncio.sleep(0)
        await batcher.stop()
        with pytest.raises(ShuttingDown):
            await batcher.submit("after")
        return await asyncio.gather(*jobs)

    assert [r for r, _ in run(main())] == [("done", i) for i in range(5)]


# ---------------------------------------------------------------------------------------------- images
def png_bytes(w: int, h: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (w, h), 200).save(buffer, format="PNG")
    return buffer.getvalue()


def test_base64_and_data_urls_decode_to_the_same_image():
    data = png_bytes(40, 30)
    limits = ImageLimits()
    b64 = base64.b64encode(data).decode()
    assert bytes_from_string(b64, limits) == data
    assert bytes_from_string(f"data:image/png;base64,{b64}", limits) == data
    assert bytes_from_string("\n".join([b64[:20], b64[20:]]), limits) == data
    image = decode_image(data, limits)
    assert image.size == (40, 30) and image.mode == "RGB"


@pytest.mark.parametrize("value", ["http://127.0.0.1:1/a.png", "file:///etc/hostname", "s3://bucket/key.jpg"])
def test_urls_are_refused_without_fetching(value):
    with pytest.raises(ImageRejected) as error:
        bytes_from_string(value, ImageLimits())
    assert error.value.status == 422 and error.value.code == "url_not_allowed"
    assert "never opens paths or fetches URLs" in str(error.value)


def test_a_path_is_not_opened(tmp_path):
    path = tmp_path / "real.png"
    path.write_bytes(png_bytes(20, 20))
    with pytest.raises(ImageRejected) as error:
        decode_image(bytes_from_string(str(path), ImageLimits()), ImageLimits())
    assert error.value.status == 422


def test_limits_are_checked_before_decoding():
    data = png_bytes(3000, 2000)  # a few kB of PNG, 6 Mpx decoded
    with pytest.raises(ImageRejected) as error:
        decode_image(data, ImageLimits(max_pixels=1_000_000))
    assert (error.value.status, error.value.code) == (413, "image_too_large")
    assert "3000x2000" in str(error.value)
    with pytest.raises(ImageRejected) as error:
        decode_image(data, ImageLimits(max_bytes=len(data) - 1))
    assert error.value.status == 413
    with pytest.raises(ImageRejected) as error:  # refused on the encoded length, before base64 decoding
        bytes_from_string("A" * 4000, ImageLimits(max_bytes=1000))
    assert error.value.status == 413


@pytest.mark.parametrize("data", [b"not an image", png_bytes(30, 30)[:60], b""])
def test_undecodable_bytes_are_a_422(data):
    with pytest.raises(ImageRejected) as error:
        decode_image(data, ImageLimits())
    assert error.value.status == 422
    assert "\n" not in str(error.value)


def test_exif_orientation_is_applied():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (20, 40, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), ImageLimits()).size == (20, 40)
