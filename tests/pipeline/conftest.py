"""One finished invert -> fit -> synthesize run shared by the pipeline tests (tests change only copies), and
S3 endpoints on 127.0.0.1: moto's server, and one that refuses every credential."""

from __future__ import annotations

import boto3
import pytest

from tests.pipeline.runs import make_spec


@pytest.fixture(scope="package")
def finished(tmp_path_factory, tiny_generator_path, toy_labeled_path):
    """(spec, results) of one full invert -> fit -> synthesize run."""
    from handsoff_ray.pipeline.run import run_stage

    spec = make_spec(tmp_path_factory.mktemp("run") / "runs", tiny_generator_path, toy_labeled_path)
    results = {name: run_stage(spec, name, engine="local") for name in ("invert", "fit", "synthesize")}
    return spec, results


@pytest.fixture
def aws_env(monkeypatch):
    """Credentials and region for moto's S3 server (any values work; none is ever sent elsewhere)."""
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 with a bucket named handsoff-test; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket="handsoff-test")
    yield endpoint
    server.stop()


@pytest.fixture
def denying_endpoint():
    """An S3 endpoint on 127.0.0.1 that answers every request 403 InvalidAccessKeyId, as AWS does for bad keys."""
    import http.server
    import threading

    class Deny(http.server.BaseHTTPRequestHandler):
        def _deny(self):
            body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code><Message>The AWS '
                    b"Access Key Id you provided does not exist in our records.</Message></Error>")
            self.send_response(403)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_PUT = do_POST = _deny

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Deny)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
