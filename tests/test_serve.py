"""``padt serve`` started for real on 127.0.0.1 with the bundled model: every endpoint, every error class, the API
key, the refusal of paths and URLs, the official ``openai`` client, metrics, and a bounded load test.

Results of the bundled model are never asserted (it will be retrained): answers are compared with the same
request run alone, structure, status codes and counters are asserted.
"""

from __future__ import annotations

import base64
import http.server
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx", reason="the dev extra is not installed: pip install 'padt[dev]'")
pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'padt[serve]'")

from serving import assert_same_prediction, padt_process, scene_png  # noqa: E402

KEY = "test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "padt-bundled"
SERVER_ARGS = [
    "--max-batch-size",
    "8",
    "--max-wait-ms",
    "50",
    "--max-queue",
    "64",
    "--max-new-tokens",
    "96",
    "--max-images",
    "2",
    "--max-image-bytes",
    "300000",
    "--max-image-pixels",
    "1000000",
    "--request-timeout",
    "600",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    with padt_process("serve", SERVER_ARGS, tmp, env={"PADT_API_KEY": KEY}) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=600) as c:
        yield c


@pytest.fixture(scope="module")
def scene():
    return scene_png(11)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"] and "\n" not in error["message"] and "Traceback" not in error["message"]
    return error["message"]


def metric_values(client) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# ------------------------------------------------------------------------------------------------ endpoints
def test_health_and_models_and_the_api_key(server):
    health = httpx.get(server.url + "/health")  # no key needed: load balancers poll it
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["model"] == MODEL
    assert httpx.get(server.url + "/metrics").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.get(server.url + "/v1/models", headers=headers)
        error_of(response, 401, "invalid_api_key")
        assert response.headers["WWW-Authenticate"] == "Bearer"
    error_of(httpx.post(server.url + "/v1/predict", json={}), 401, "invalid_api_key")
    error_of(httpx.post(server.url + "/v1/chat/completions", json={}), 401, "invalid_api_key")
    models = httpx.get(server.url + "/v1/models", headers=AUTH)
    assert models.status_code == 200
    assert [m["id"] for m in models.json()["data"]] == [MODEL]


def test_predict_upload_gives_the_libraries_json(client, scene):
    from padt.inference import PaDT, default_model

    png, sc = scene
    response = client.post(
        "/v1/predict",
        files={"image": ("scene.png", png, "image/png")},
        data={"task": "ovd", "prompt": "circle, star, square", "max_new_tokens": "64"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"text", "objects", "finished", "warnings", "images", "model", "timing"}
    assert body["images"] == [{"width": sc.width, "height": sc.height}] and body["model"] == MODEL
    assert set(body["timing"]) == {"queue_ms", "inference_ms", "total_ms", "batch_size"}
    assert body["timing"]["batch_size"] == 1
    pipe = PaDT.from_pretrained(default_model())
    [alone] = pipe([sc.image], ["circle, star, square"], task="ovd", max_new_tokens=64)
    assert_same_prediction(body, alone.to_json(), [(sc.width, sc.height)])


def test_predict_json_base64_and_data_url_agree(client, scene):
    png, sc = scene
    fields = {"task": "rec", "prompt": "the small red circle", "max_new_tokens": 48}
    upload = client.post(
        "/v1/predict", files={"image": ("s.png", png)}, data={k: str(v) for k, v in fields.items()}
    ).json()
    plain = client.post("/v1/predict", json=fields | {"image": base64.b64encode(png).decode()}).json()
    url = client.post("/v1/predict", json=fields | {"images": [data_url(png)]}).json()
    for other in (plain, url):
        assert_same_prediction(other, upload, [(sc.width, sc.height)])
    no_masks = client.post("/v1/predict", json=fields | {"image": data_url(png), "masks": False}).json()
    assert no_masks["text"] == upload["text"]
    assert all(o["mask_rle"] is None for o in no_masks["objects"])


def test_two_images_in_one_request(client, scene):
    png, sc = scene
    other, sc2 = scene_png(12)
    response = client.post(
        "/v1/predict",
        files=[("image", ("a.png", png)), ("image", ("b.png", other))],
        data={"prompt": "Which image has more shapes?", "max_new_tokens": "16"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["images"] == [
        {"width": sc.width, "height": sc.height},
        {"width": sc2.width, "height": sc2.height},
    ]
    assert all(o["image"] in (0, 1) for o in body["objects"])


def test_chat_completions_follow_openais_schema(client, scene):
    png, sc = scene
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url(png)}},
                {"type": "text", "text": "the small red circle"},
            ],
        }
    ]
    response = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": messages, "task": "rec", "max_tokens": 48}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (
        body["object"] == "chat.completion" and body["model"] == MODEL and body["id"].startswith("chatcmpl-")
    )
    [choice] = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    same = client.post(
        "/v1/predict",
        json={"image": data_url(png), "task": "rec", "prompt": "the small red circle", "max_new_tokens": 48},
    ).json()
    assert choice["message"]["content"] == same["text"]
    assert_same_prediction(
        {"text": choice["message"]["content"], "objects": choice["message"]["objects"]},
        same,
        [(sc.width, sc.height)],
    )
    assert (choice["finish_reason"] == "stop") == same["finished"]


def test_mask_box_weight_reaches_the_boxes(client):
    """``mask_box_weight`` in a request gives the pipeline's boxes with that weight: the same answer, other
    boxes (the bundled model's default blends the masks' boxes in)."""
    from padt.inference import PaDT, default_model

    png, sc = scene_png(0)
    pipe = PaDT.from_pretrained(default_model())
    fields = {"image": data_url(png), "task": "ovd", "prompt": "circle, hexagon", "max_new_tokens": 96}
    default = client.post("/v1/predict", json=fields).json()
    [alone] = pipe([sc.image], ["circle, hexagon"], task="ovd", max_new_tokens=96, mask_box_weight=0.0)
    got = client.post("/v1/predict", json=fields | {"mask_box_weight": 0.0}).json()
    assert_same_prediction(got, alone.to_json(), [(sc.width, sc.height)])
    assert got["text"] == default["text"] and got["objects"]
    assert [o["box_xyxy"] for o in got["objects"]] != [o["box_xyxy"] for o in default["objects"]]


def test_decoding_penalties_reach_generation(client):
    """``vrt_reuse_penalty`` (and ``vrt_repeat_penalty``) in a request decode as the pipeline does with them: on this
    scene the bundled model's caption changes without the reuse penalty."""
    from padt.inference import PaDT, default_model

    png, sc = scene_png(3)
    pipe = PaDT.from_pretrained(default_model())
    fields = {"image": data_url(png), "task": "ric", "max_new_tokens": 96}
    default = client.post("/v1/predict", json=fields).json()
    for options in ({"vrt_reuse_penalty": 0.0}, {"vrt_reuse_penalty": 0.0, "vrt_repeat_penalty": 0.0}):
        [alone] = pipe([sc.image], [""], task="ric", max_new_tokens=96, **options)
        got = client.post("/v1/predict", json=fields | options).json()
        assert_same_prediction(got, alone.to_json(), [(sc.width, sc.height)])
        assert got["text"] != default["text"]
        chat = client.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(png)}}]}
                ],
                "task": "ric",
                "max_tokens": 96,
            }
            | options,
        ).json()
        assert chat["choices"][0]["message"]["content"] == alone.text


def test_the_openai_client_works_unchanged(server, scene):
    openai = pytest.importorskip("openai", reason="the dev extra is not installed: pip install 'padt[dev]'")
    png, sc = scene
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=600)
    assert [m.id for m in client.models.list()] == [MODEL]
    content = [
        {"type": "text", "text": "circle, star"},
        {"type": "image_url", "image_url": {"url": data_url(png)}},
    ]
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        max_tokens=64,
        extra_body={"task": "ovd"},
    )
    message = completion.choices[0].message
    assert isinstance(message.content, str) and message.content
    objects = message.objects  # the extra field survives the client's parsing
    assert message.content.count("<|VRT_") == sum(len(o["vrt_ids"]) for o in objects)
    for o in objects:
        x0, y0, x1, y1 = o["box_xyxy"]
        assert 0 <= x0 <= x1 <= sc.width and 0 <= y0 <= y1 <= sc.height
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": content}])
    with pytest.raises(openai.UnprocessableEntityError, match="unknown task 'seg'"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": content}], extra_body={"task": "seg"}
        )


# ------------------------------------------------------------------------------------------------ errors
def png(width: int, height: int, noise: bool) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    pixels = (
        np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
        if noise
        else np.full((height, width, 3), 90, dtype=np.uint8)
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_input_gets_one_line_errors(client, scene):
    image, _ = scene
    ok = {"task": "rec", "prompt": "the circle", "image": data_url(image)}
    cases = [
        (
            client.post(
                "/v1/predict", content=b'{"task": "rec",', headers={"content-type": "application/json"}
            ),
            422,
            "invalid_json",
        ),
        (
            client.post("/v1/predict", content=b"", headers={"content-type": "application/json"}),
            422,
            "invalid_json",
        ),
        (client.post("/v1/predict", json=[1, 2]), 422, "invalid_json"),
        (client.post("/v1/predict", json={"task": "rec", "prompt": "the circle"}), 422, "missing_image"),
        (client.post("/v1/predict", data={"task": "rec", "prompt": "the circle"}), 422, "missing_image"),
        (client.post("/v1/predict", json=ok | {"task": "segment"}), 422, "unknown_task"),
        (
            client.post("/v1/predict", json=ok | {"image": base64.b64encode(b"GIF89a not really").decode()}),
            422,
            "invalid_image",
        ),
        (
            client.post("/v1/predict", files={"image": ("x.png", image[:100])}, data={"task": "ric"}),
            422,
            "invalid_image",
        ),
        (client.post("/v1/predict", json=ok | {"image": "not base64!"}), 422, "invalid_image"),
        (client.post("/v1/predict", json=ok | {"image": 42}), 422, "invalid_image"),
        (client.post("/v1/predict", json=ok | {"prompt": ""}), 422, "empty_prompt"),
        (client.post("/v1/predict", json={"image": data_url(image), "prompt": "  "}), 422, "empty_prompt"),
        (client.post("/v1/predict", json=ok | {"max_new_tokens": 97}), 422, "invalid_parameter"),
        (client.post("/v1/predict", json=ok | {"max_new_tokens": 0}), 422, "invalid_parameter"),
        (client.post("/v1/predict", json=ok | {"vrt_repeat_penalty": -1}), 422, "invalid_parameter"),
        (client.post("/v1/predict", json=ok | {"vrt_reuse_penalty": -1}), 422, "invalid_parameter"),
        (client.post("/v1/predict", json=ok | {"mask_box_weight": 1.5}), 422, "invalid_parameter"),
        (client.post("/v1/predict", json=ok | {"ovd_end_penalty": -1}), 422, "invalid_parameter"),
        (client.post("/v1/predict", json=ok | {"ovd_duplicate_iou": 1.5}), 422, "invalid_parameter"),
        (client.post("/v1/predict", json=ok | {"ovd_grammar": "maybe"}), 422, "invalid_parameter"),
        (client.post("/v1/predict", json=ok | {"temprature": 0.5}), 422, "invalid_parameter"),
        (client.post("/v1/predict", json=ok | {"images": [data_url(image)] * 2}), 413, "too_many_images"),
        (
            client.post(
                "/v1/predict", files={"image": ("big.png", png(330, 330, noise=True))}, data={"task": "ric"}
            ),
            413,
            "image_too_large",
        ),  # 327 kB > 300,000 bytes
        (
            client.post(
                "/v1/predict",
                files={"image": ("wide.png", png(1200, 1000, noise=False))},
                data={"task": "ric"},
            ),
            413,
            "image_too_large",
        ),  # 1.2 Mpx > 1 Mpx, a few kB
        (
            client.post(
                "/v1/predict", content=b"x" * 2_000_000, headers={"content-type": "application/json"}
            ),
            413,
            "request_too_large",
        ),  # over 2 x 400 kB + 1 MiB
        (client.get("/v1/predict"), 405, "method_not_allowed"),
        (client.get("/v2/nothing"), 404, "not_found"),
    ]
    for response, status, code in cases:
        error_of(response, status, code)


def test_chat_requests_it_cannot_honour_are_refused(client, scene):
    png, _ = scene
    user = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(png)}},
            {"type": "text", "text": "the circle"},
        ],
    }
    base = {"model": MODEL, "messages": [user], "task": "rec"}
    cases = [
        (base | {"stream": True}, 422, "invalid_parameter"),
        (base | {"n": 2}, 422, "invalid_parameter"),
        (base | {"temperature": 0.7}, 422, "invalid_parameter"),
        (base | {"logit_bias": {"1": 5}}, 422, "invalid_parameter"),
        (base | {"messages": [{"role": "system", "content": "be brief"}, user]}, 422, "invalid_parameter"),
        (base | {"messages": []}, 422, "invalid_parameter"),
        (base | {"messages": [{"role": "user", "content": "the circle"}]}, 422, "missing_image"),
        (
            base | {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            422,
            "invalid_parameter",
        ),
        (base | {"model": "other"}, 404, "model_not_found"),
        ({"messages": [user]}, 422, "invalid_parameter"),
    ]
    for body, status, code in cases:
        error_of(client.post("/v1/chat/completions", json=body), status, code)
    # temperature 0 and a seed are what greedy decoding does anyway
    assert (
        client.post(
            "/v1/chat/completions", json=base | {"temperature": 0, "seed": 3, "max_tokens": 8}
        ).status_code
        == 200
    )


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(scene_png(3)[0])

    def log_message(self, *args):
        pass


def test_the_server_never_opens_paths_or_urls(client, scene, tmp_path):
    png, _ = scene
    path = tmp_path / "on_the_server.png"
    path.write_bytes(png)
    web = http.server.HTTPServer(("127.0.0.1", 0), _CountingHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{web.server_address[1]}/scene.png"
    try:
        for source in (url, f"file://{path}"):
            error_of(
                client.post("/v1/predict", json={"task": "ric", "image": source}), 422, "url_not_allowed"
            )
            chat = {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": source}},
                            {"type": "text", "text": "hi"},
                        ],
                    }
                ],
            }
            error_of(client.post("/v1/chat/completions", json=chat), 422, "url_not_allowed")
        error_of(client.post("/v1/predict", json={"task": "ric", "image": str(path)}), 422, "invalid_image")
        error_of(client.post("/v1/predict", data={"task": "ric", "image": str(path)}), 422, "invalid_image")
    finally:
        web.shutdown()
    assert _CountingHandler.hits == 0


def test_metrics_count_requests_batches_and_queue(client, scene):
    png, _ = scene
    before = metric_values(client)
    for _ in range(2):
        assert (
            client.post(
                "/v1/predict", json={"task": "ric", "image": data_url(png), "max_new_tokens": 8}
            ).status_code
            == 200
        )
    error_of(client.post("/v1/predict", json={"task": "nope", "image": data_url(png)}), 422, "unknown_task")
    after = metric_values(client)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("padt_requests_total", endpoint="/v1/predict", status="200") == 2
    assert delta("padt_requests_total", endpoint="/v1/predict", status="422") == 1
    assert delta("padt_request_seconds_count", endpoint="/v1/predict") == 3
    assert delta("padt_batch_size_count") == 2 and delta("padt_batch_size_sum") == 2
    assert delta("padt_queue_seconds_count") == 2
    assert after[("padt_queue_length", ())] == 0 and after[("padt_in_flight", ())] == 0


# ------------------------------------------------------------------------------------------------ load
def load_requests() -> list[dict]:
    """16 different requests: 8 scenes x tasks, two sets of decoding options."""
    import numpy as np

    from padt.data.synthetic import sample_referring_expression

    specs = []
    for i in range(16):
        png, sc = scene_png(100 + i // 2)
        task = ("rec", "ovd", "res", "ric")[i % 4]
        if task in ("rec", "res"):
            picked = sample_referring_expression(sc, np.random.default_rng(i))
            prompt = picked[1].text if picked else f"the {sc.objects[0].shape}"
        elif task == "ovd":
            prompt = ", ".join(sc.kinds)
        else:
            prompt = ""
        specs.append(
            {
                "json": {
                    "image": data_url(png),
                    "task": task,
                    "prompt": prompt,
                    "max_new_tokens": 64 if i % 3 else 96,
                },
                "size": (sc.width, sc.height),
            }
        )
    return specs


def concurrently(url: str, bodies: list[dict], clients: int, barrier: bool = False) -> list[httpx.Response]:
    """POST every body to /v1/predict from ``clients`` threads, each with its own connection."""
    local = threading.local()
    start = threading.Barrier(min(clients, len(bodies))) if barrier else None

    def post(body):
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, headers=AUTH, timeout=600)
        if start is not None:
            start.wait(60)
        return local.client.post("/v1/predict", json=body)

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(post, bodies, timeout=1200))


@pytest.fixture(scope="module")
def sequential(client):
    """Each load request sent alone (one batch each), the reference for the concurrent runs."""
    specs = load_requests()
    results = []
    for spec in specs:
        response = client.post("/v1/predict", json=spec["json"])
        assert response.status_code == 200, response.text
        assert response.json()["timing"]["batch_size"] == 1
        results.append(response.json())
    assert len({r["text"] + str([o["box_xyxy"] for o in r["objects"]]) for r in results}) == len(results), (
        "two load requests have the same answer; a mix-up would go unseen"
    )
    return specs, results


@pytest.mark.slow
def test_64_requests_from_16_clients_are_batched_and_answered_each_as_alone(server, client, sequential):
    specs, alone = sequential
    order = [i % len(specs) for i in range(64)]
    before = metric_values(client)
    responses = concurrently(server.url, [specs[i]["json"] for i in order], clients=16)
    after = metric_values(client)
    assert [r.status_code for r in responses] == [200] * 64
    for n, (i, response) in enumerate(zip(order, responses)):
        assert_same_prediction(response.json(), alone[i], [specs[i]["size"]], where=f"request {n} (spec {i})")
    sizes = [r.json()["timing"]["batch_size"] for r in responses]
    assert max(sizes) > 1, "no batch of more than one request formed"
    assert max(sizes) <= 8
    batches = after[("padt_batch_size_count", ())] - before[("padt_batch_size_count", ())]
    single = (
        after[("padt_batch_size_bucket", (("le", "1.0"),))]
        - before[("padt_batch_size_bucket", (("le", "1.0"),))]
    )
    assert after[("padt_batch_size_sum", ())] - before[("padt_batch_size_sum", ())] == 64
    assert single < batches < 64


@pytest.mark.slow
def test_a_full_queue_answers_503_with_retry_after(tmp_path, sequential):
    specs, alone = sequential
    args = [*SERVER_ARGS, "--max-queue", "2", "--max-batch-size", "1", "--no-warmup"]
    with padt_process("serve", args, tmp_path, env={"PADT_API_KEY": KEY}) as small:
        responses = concurrently(small.url, [specs[i]["json"] for i in range(16)], clients=16, barrier=True)
        health = httpx.get(small.url + "/health").json()
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
    for i, response in enumerate(responses):
        if response.status_code == 503:
            error_of(response, 503, "queue_full")
            assert int(response.headers["Retry-After"]) >= 1
        else:
            assert_same_prediction(response.json(), alone[i], [specs[i]["size"]], where=f"spec {i}")
    assert health["queue_length"] == 0 and health["in_flight"] == 0
    assert small.outside_connections() == []


def test_the_server_reached_no_other_host(server):
    assert server.outside_connections() == []


# ------------------------------------------------------------------------------------------------ lifecycle
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A random tiny model: it never writes its end token, so a request runs exactly max_new_tokens steps."""
    from padt.processing import PaDTProcessor
    from padt.tiny import tiny_model, tiny_processor

    folder = tmp_path_factory.mktemp("tiny")
    model = tiny_model(seed=0)
    model.save_pretrained(folder)
    PaDTProcessor(tiny_processor(max_pixels=224 * 224), model.vocab_size).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_request_over_the_timeout_is_504_and_the_key_can_come_from_the_flag(
    tmp_path, tiny_checkpoint, scene
):
    png, _ = scene
    args = [
        "--model",
        str(tiny_checkpoint),
        "--api-key",
        "flag-key",
        "--request-timeout",
        "0.2",
        "--max-new-tokens",
        "300",
        "--no-warmup",
    ]
    with padt_process("serve", args, tmp_path) as tiny, httpx.Client(base_url=tiny.url, timeout=300) as c:
        error_of(c.get("/v1/models", headers=AUTH), 401, "invalid_api_key")
        assert (
            c.get("/v1/models", headers={"Authorization": "Bearer flag-key"}).json()["data"][0]["id"]
            == tiny_checkpoint.name
        )
        response = c.post(
            "/v1/predict",
            headers={"Authorization": "Bearer flag-key"},
            json={"image": data_url(png), "prompt": "describe", "max_new_tokens": 300},
        )
        assert "0.2 s" in error_of(response, 504, "timeout")
        assert c.get("/health").json()["status"] == "ok"


def test_shutdown_finishes_the_requests_in_flight(tmp_path, tiny_checkpoint, scene):
    import signal
    import time

    png, _ = scene
    with padt_process("serve", ["--model", str(tiny_checkpoint), "--no-warmup"], tmp_path) as tiny:
        result = {}

        def post():
            result["response"] = httpx.post(
                tiny.url + "/v1/predict",
                timeout=300,
                json={"image": data_url(png), "prompt": "describe", "max_new_tokens": 60},
            )

        thread = threading.Thread(target=post)
        thread.start()
        deadline = time.monotonic() + 120
        while httpx.get(tiny.url + "/health").json()["in_flight"] == 0:
            assert thread.is_alive(), "the request finished before the test could see it in flight"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        tiny.proc.send_signal(signal.SIGTERM)
        thread.join(300)
        code = tiny.proc.wait(120)
        response = result["response"]
        assert response.status_code == 200, response.text
        assert response.json()["finished"] is False  # all 60 steps ran: the request was not cut short
        assert code in (0, -signal.SIGTERM), tiny.log_tail()
        assert "Finished server process" in tiny.log_tail()
        with pytest.raises(httpx.ConnectError):
            httpx.get(tiny.url + "/health")
