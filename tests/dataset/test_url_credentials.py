"""Credentials in URLs (``user:password@``): refused where a URL would be written into a manifest
(``fastcas index``), redacted (``user:***@``) in every message, and unnecessary: ~/.netrc works."""
import base64
import http.server
import threading

import pytest

from fastcas.cli import main
from fastcas.core.urls import has_userinfo, redact
from fastcas.dataset.fetch import RemoteOptions
from fastcas.dataset.indexer import expand_sources, index_dataset
from fastcas.dataset.remote import BadResponseError, RemoteError, ShardCache, ShardChangedError
from tests.dataset.test_remote_faults import _tar

FAST = RemoteOptions(connect_timeout=2, read_timeout=2, retries=0)
SECRET = "s3cr3t-Pa55"


class _AuthServer:
    """http.server on 127.0.0.1 serving ``files`` {path: bytes}; with ``auth`` ("user:password")
    a request without that Basic authorization gets 401. Counts requests."""

    def __init__(self, files: dict, auth: str | None = None):
        self.files, self.requests = files, 0
        want = None if auth is None else "Basic " + base64.b64encode(auth.encode()).decode()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests += 1
                if want is not None and self.headers.get("Authorization") != want:
                    self.send_error(401)
                    return
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, userinfo: str = "") -> str:
        return f"http://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def auth_server():
    made = []

    def make(files, auth=None):
        made.append(_AuthServer(files, auth))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_redact_keeps_the_user_and_hides_the_password():
    assert redact("http://user:pw@host/a.tar: not found") == "http://user:***@host/a.tar: not found"
    assert redact("s3://AKIA:wJalrX+Y@bucket/a.tar") == "s3://AKIA:***@bucket/a.tar"
    assert redact("gs://KEY:SECRET@bucket/a.tar") == "gs://KEY:***@bucket/a.tar"
    assert redact("https://token@host/x") == "https://***@host/x"  # a lone userinfo is often a token
    assert redact("http://u:p@ss@host:8080/a") == "http://u:***@host:8080/a"  # a raw '@' in the password
    assert redact("URL('http://a:b@h/x') and http://c:d@e/f") == "URL('http://a:***@h/x') and http://c:***@e/f"
    assert redact("http:/u:pw@host/ds: no such dataset") == "http:/u:***@host/ds: no such dataset"  # via Path
    for clean in ("http://host/a@b.tar", "user:pw@host", "/data/x@y.tar", "mailto:a@b"):
        assert redact(clean) == clean
    assert has_userinfo("http://u:p@h/x") and has_userinfo("s3://K:S@b/x") and has_userinfo("https://t@h/x")
    assert not has_userinfo("http://h/x@y.tar") and not has_userinfo("/local/u:p@h.tar")


def test_a_secret_with_an_unencoded_slash_is_recognised(tmp_path, auth_server, capsys):
    """AWS secret keys are base64 ('wJal/rX...'): unencoded, the '/' makes RFC 3986 parsers end the
    authority at it, and the secret was neither redacted nor refused (issue 36, item 5's gap)."""
    slashed = "pa/ss+Wq/9"
    assert has_userinfo(f"http://user:{slashed}@host/x.tar") and has_userinfo(f"s3://AKIA:{slashed}@bucket/a.tar")
    for url in (f"http://user:{slashed}@host/x.tar", f"s3://AKIA:{slashed}@bucket/a.tar", f"http:/user:{slashed}@h/d"):
        text = redact(f"{url}: not found")  # the last: a URL that went through pathlib.Path
        assert slashed not in text and "pa/ss" not in text and ":***@" in text, text
    assert redact(f"see http://user:{slashed}@host/x.tar") == "see http://user:***@host/x.tar"
    for clean in ("http://host:8080/a/b@2x.png", "http://host/dir/user:x@y", "gs://bucket/a:b/c@d",
                  "http://[::1]:8080/x@y"):
        assert redact(clean) == clean and not has_userinfo(clean)
    srv = auth_server({"/a.tar": _tar()})
    url = srv.url("/a.tar", f"user:{slashed}")
    with pytest.raises(ValueError, match="credentials in a URL are refused") as info:
        index_dataset([url], tmp_path / "out", workers=1)
    assert "pa/ss" not in str(info.value) and "user:***@127.0.0.1" in str(info.value)
    assert main(["index", url, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "credentials in a URL are refused" in err and "user:***@127.0.0.1" in err and "pa/ss" not in err
    assert srv.requests == 0 and not (tmp_path / "out").exists()


def test_remote_errors_name_the_url_with_the_password_redacted(tmp_path, auth_server):
    body = _tar()
    srv = auth_server({"/a.tar": body, "/page.tar": b"<html>login</html>" * 40})
    cache = ShardCache(tmp_path / "c", options=FAST)
    cases = [
        (RemoteError, srv.url("/missing.tar", f"user:{SECRET}"), {}),  # 404
        (BadResponseError, srv.url("/page.tar", f"user:{SECRET}"), {}),  # not a tar
        (ShardChangedError, srv.url("/a.tar", f"user:{SECRET}"), {"size": len(body) + 1}),  # size differs
    ]
    for kind, url, kw in cases:
        with pytest.raises(kind) as info:
            cache.get(url, **kw)
        msg = str(info.value)
        assert "user:***@127.0.0.1" in msg and SECRET not in msg, msg
        assert SECRET not in repr(info.value) and SECRET not in str(info.value.args)
    # the cache file's name (and digest) do not derive from the password either
    assert SECRET not in str(cache.path_for(srv.url("/", f"user:{SECRET}")))
    assert cache.path_for(srv.url("/a.tar", f"user:{SECRET}")) != cache.path_for(srv.url("/a.tar"))


def test_index_refuses_credentials_in_a_url_before_any_request(tmp_path, auth_server):
    srv = auth_server({"/a.tar": _tar()})
    for url in (srv.url("/a.tar", f"user:{SECRET}"), f"s3://AKIAEXAMPLE:{SECRET}@bucket/a-{{0..3}}.tar",
                f"gs://user:{SECRET}@bucket/a.tar", srv.url("/a.tar", SECRET)):
        with pytest.raises(ValueError, match=r"credentials in a URL are refused .*~/\.netrc.*environment"
                                             r".*fsspec's storage options") as info:
            index_dataset([url], tmp_path / "out", workers=1)
        assert SECRET not in str(info.value) and "***@" in str(info.value)
        with pytest.raises(ValueError, match="credentials in a URL are refused"):
            expand_sources([url])
    assert srv.requests == 0 and not (tmp_path / "out").exists()


def test_index_cli_exits_2_naming_the_redacted_url(tmp_path, auth_server, capsys):
    srv = auth_server({"/a.tar": _tar()})
    url = srv.url("/a.tar", f"user:{SECRET}")
    rc = main(["index", url, "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 2 and "fastcas index: error:" in err and "user:***@127.0.0.1" in err
    assert "credentials in a URL are refused" in err and "netrc" in err and SECRET not in err
    assert srv.requests == 0 and not (tmp_path / "out").exists()


def test_cli_errors_redact_a_url_password_whatever_raised_them(tmp_path, capsys):
    assert main(["info", f"http://user:{SECRET}@example.invalid/ds"]) == 2
    err = capsys.readouterr().err
    assert "user:***@example.invalid" in err and SECRET not in err


def test_netrc_credentials_reach_the_server(tmp_path, auth_server, monkeypatch):
    body = _tar()
    srv = auth_server({"/a.tar": body}, auth=f"user:{SECRET}")
    with pytest.raises(RemoteError):  # no credentials: 401
        ShardCache(tmp_path / "c0", options=FAST).get(srv.url("/a.tar"))
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login user password {SECRET}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    path = ShardCache(tmp_path / "c1", options=FAST).get(srv.url("/a.tar"))
    assert path.read_bytes() == body
    netrc.write_text(f"machine 127.0.0.1 login user password {SECRET}\nbogus token\n")
    with pytest.raises(RemoteError, match=rf"{netrc}: cannot use this netrc file: bad follower token 'bogus' "
                                          r"\(line 2\)") as info:
        ShardCache(tmp_path / "c2", options=FAST).get(srv.url("/a.tar"))
    assert SECRET not in str(info.value)
