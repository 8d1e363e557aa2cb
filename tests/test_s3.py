"""Corpora in object storage: moto's S3 server on 127.0.0.1 (a real HTTP server; requests are counted on the
server side), reached through s3fs with AWS_ENDPOINT_URL and dummy credentials from the environment."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import boto3
import pytest
import requests
import torch
from corpus_fixtures import write_pmemo2019_fixture
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from a2b_pipeline.cli.corpus import corpus_main
from a2b_pipeline.configs import config_from_dict
from a2b_pipeline.data import cache_admin, feature_cache, remote
from a2b_pipeline.data.corpora import CorpusError
from a2b_pipeline.data.corpora.pmemo2019 import scan_pmemo2019
from a2b_pipeline.data.pipeline import prepare_data


class _QuietHandler(MotoRequestHandler):
    def log_request(self, *args, **kwargs) -> None:  # no access log on stderr
        pass


class CountingS3Server(ThreadedMotoServer):
    """moto's threaded server with a WSGI wrapper that records (method, path, query) of every request."""

    def __init__(self) -> None:
        super().__init__("127.0.0.1", 0, verbose=False)
        self.log: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ, start_response):
            with self._lock:
                self.log.append(
                    (environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""))
                )
            return app(environ, start_response)

        self._server = make_server(
            self._ip_address, self._port, counting, True, request_handler=_QuietHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def endpoint(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def object_reads(self, bucket: str) -> Counter:
        """GET/HEAD of objects (not listings) in `bucket`, per key."""
        with self._lock:
            log = list(self.log)
        return Counter(
            (m, p)
            for m, p, q in log
            if m in ("GET", "HEAD") and p.startswith(f"/{bucket}/") and "list-type" not in q
        )

    def clear(self) -> None:
        with self._lock:
            self.log.clear()


@pytest.fixture(scope="module")
def s3_server():
    server = CountingS3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """Environment of the standard AWS chain pointing at the test server, with dummy credentials."""
    env = {
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    remote.forget_listings()
    yield s3_server
    remote.forget_listings()


def upload(local_root: Path, bucket: str, prefix: str) -> str:
    client = boto3.client("s3")
    client.create_bucket(Bucket=bucket)
    for p in sorted(local_root.rglob("*")):
        if p.is_file():
            client.put_object(
                Bucket=bucket, Key=f"{prefix}/{p.relative_to(local_root).as_posix()}", Body=p.read_bytes()
            )
    return f"s3://{bucket}/{prefix}"


def pmemo_config(root: str, tmp_path: Path, cache: str) -> dict:
    return {
        "name": "pmemo-s3",
        "seed": 0,
        "data": {
            "datasets": [{"name": "pmemo2019", "type": "pmemo2019", "root": root}],
            "channels": ["eda"],
            "batch_size": 4,
            "n_mels": 16,
            "window_seconds": 4,
            "hop_seconds": 2,
            "val_fraction": 0.34,
            "test_fraction": 0.0,
            "on_bad_recording": "skip",
            "cache_dir": str(tmp_path / cache),
        },
        "model": {"name": "conv_gru", "conv_channels": 8, "hidden": 8, "dropout": 0.0},
        "scheduler": {"name": "constant"},
        "train": {
            "max_steps": 4,
            "num_epochs": None,
            "device": "cpu",
            "num_threads": 1,
            "progress_bar": False,
            "log_every_n_steps": 1,
            "val_every_n_steps": 4,
        },
        "checkpoint": {"dir": str(tmp_path / f"runs-{cache}")},
        "tracking": {"wandb_mode": "disabled"},
    }


def windows(prepared) -> dict:
    out = {}
    for split, by_name in prepared.splits.items():
        for name, ds in by_name.items():
            for i in range(len(ds)):
                rec, second = ds.window_info(i)
                out[(split, name, rec.recording_id, second)] = ds[i]
    return out


@pytest.fixture(scope="module")
def pmemo_local(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("s3corpus") / "PMEmo2019"
    write_pmemo2019_fixture(root, songs=3, subjects=3, seconds=8.0, sample_rate=22050)
    return root


def test_bucket_loads_like_local_disk_and_second_pass_gets_nothing(s3, pmemo_local, tmp_path):
    url = upload(pmemo_local, "pmemo-bucket", "corpora/PMEmo2019")
    local = config_from_dict(pmemo_config(str(pmemo_local), tmp_path, "cache-local"))
    remote_cfg = config_from_dict(pmemo_config(url, tmp_path, "cache-s3"))

    # the listing is the local one with URLs: same recordings, subjects and skipped records
    scan_l, scan_r = scan_pmemo2019(str(pmemo_local), on_bad="skip"), scan_pmemo2019(url, on_bad="skip")
    assert [(r.recording_id, r.subject_id) for r in scan_r.listing.recordings] == [
        (r.recording_id, r.subject_id) for r in scan_l.listing.recordings
    ]
    assert scan_r.listing.recordings[0].audio_path.startswith(url + "/chorus/")
    assert [s.reason for s in scan_r.listing.skipped] == [s.reason for s in scan_l.listing.skipped]
    assert "s3://pmemo-bucket/corpora/PMEmo2019/chorus/999.mp3" in {s.path for s in scan_r.listing.skipped}

    feature_cache.forget_memory()
    prepared_local = prepare_data(local)
    feature_cache.forget_memory()
    remote.forget_listings()
    s3.clear()
    prepared_s3 = prepare_data(remote_cfg)
    first = s3.object_reads("pmemo-bucket")
    assert first and max(first.values()) == 1, first  # each object downloaded once, however often it is read
    downloads = sum(1 for method, _ in first if method == "GET")
    assert cache_admin.usage(remote_cfg.data.cache_dir)["remote"]["entries"] == downloads  # `a2b cache`
    a, b = windows(prepared_local), windows(prepared_s3)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]), k

    # a second run (new process state: no listings, no features in memory): no GET, no HEAD of any object
    feature_cache.forget_memory()
    remote.forget_listings()
    s3.clear()
    again = prepare_data(remote_cfg)
    assert s3.object_reads("pmemo-bucket") == Counter()
    assert any(m == "GET" and "list-type" in q for m, _, q in s3.log)  # it listed the bucket, once
    assert again.data_version == prepared_s3.data_version

    # one object changes upstream: only that one is fetched again, and the data version moves
    client = boto3.client("s3")
    key = "corpora/PMEmo2019/EDA/2_EDA.csv"
    body = client.get_object(Bucket="pmemo-bucket", Key=key)["Body"].read().decode()
    client.put_object(Bucket="pmemo-bucket", Key=key, Body=body.replace("\n", "\r\n").encode())
    feature_cache.forget_memory()
    remote.forget_listings()
    s3.clear()
    changed = prepare_data(remote_cfg)
    assert s3.object_reads("pmemo-bucket") == Counter({("GET", f"/pmemo-bucket/{key}"): 1})
    assert changed.data_version != prepared_s3.data_version


def test_bucket_trains_like_local_disk(s3, pmemo_local, tmp_path):
    from a2b_pipeline.state import TrainState
    from a2b_pipeline.train import train

    url = upload(pmemo_local, "pmemo-train", "PMEmo2019")
    losses = {}
    for name, root in (("local", str(pmemo_local)), ("s3", url)):
        cfg = config_from_dict(pmemo_config(root, tmp_path, f"cache-{name}"))
        feature_cache.forget_memory()
        state = train(TrainState.from_config(cfg, run_dir=tmp_path / f"run-{name}"))
        assert state.status == "complete", state.message
        losses[name] = [(m.step, m.value) for m in state.metric_history if m.name == "train/loss"]
    assert losses["local"] and losses["local"] == losses["s3"]


def test_missing_bucket_and_key_are_named(s3, tmp_path, capsys):
    with pytest.raises(CorpusError, match="bucket 'no-such-bucket' does not exist"):
        scan_pmemo2019("s3://no-such-bucket/PMEmo2019")
    assert corpus_main("s3://no-such-bucket/PMEmo2019", "pmemo2019", True, None) == 2
    err = capsys.readouterr().err
    assert "no-such-bucket" in err and "does not exist" in err and "Traceback" not in err
    assert err.count("\n") == 1

    boto3.client("s3").create_bucket(Bucket="some-bucket")
    with pytest.raises(remote.RemoteNotFoundError, match="key 'x/missing.csv' in bucket 'some-bucket'"):
        remote.fetch("s3://some-bucket/x/missing.csv", tmp_path / "cache")
    with pytest.raises(CorpusError, match="nothing under key prefix 'PMEmo2019' in bucket 'some-bucket'"):
        scan_pmemo2019("s3://some-bucket/PMEmo2019")
    # prepare_data on a config that names the missing bucket: the same message
    cfg = config_from_dict(pmemo_config("s3://no-such-bucket/PMEmo2019", tmp_path, "c"))
    with pytest.raises(CorpusError, match="no-such-bucket"):
        prepare_data(cfg)


def test_refused_and_missing_credentials_are_named(s3, pmemo_local, tmp_path, monkeypatch, capsys):
    url = upload(pmemo_local, "locked-bucket", "PMEmo2019")
    requests.post(f"{s3.endpoint}/moto-api/reset-auth", data=b"0", timeout=10)  # moto now checks credentials
    try:
        remote.forget_listings()
        assert corpus_main(url, "pmemo2019", False, None) == 2
        err = capsys.readouterr().err
        assert "access refused" in err and "locked-bucket" in err and "Traceback" not in err
        assert "testing" not in err  # credentials never appear in messages
    finally:
        requests.post(f"{s3.endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(remote.RemoteAccessError, match="no usable credentials for bucket 'locked-bucket'"):
        remote.list_tree(url)
