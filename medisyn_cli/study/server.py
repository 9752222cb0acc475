"""`medisyn study serve`: the study's site/ on a local port; readers' answers POSTed to /answers land in answers/.

Only files under site/ are served (never key.json or anything reached through '..' or a link); directories are
not listed; a submission must be JSON under MAX_POST_BYTES that matches the study, else 400/411/413.
"""

from __future__ import annotations

import json
import re
import sys
import time
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from medisyn_cli.core.errors import MedisynError
from medisyn_cli.core.files import atomic_write_text
from medisyn_cli.study.answers import MAX_ANSWER_BYTES, check_answers, load_key

MAX_POST_BYTES = MAX_ANSWER_BYTES


class StudyHandler(SimpleHTTPRequestHandler):
    """Static files from site/ only, plus POST /answers."""

    server_version = "medisyn-study"
    sys_version = ""

    def __init__(self, *args, study: Path, key: dict, quiet: bool, **kwargs):
        self.study, self.key, self.quiet = study, key, quiet
        super().__init__(*args, directory=str(study / "site"), **kwargs)

    def translate_path(self, path: str) -> str:
        """The file under site/ a URL names, or '' (answered 404) when it would leave site/."""
        root = (self.study / "site").resolve()
        relative = unquote(urlsplit(path).path)
        parts = [p for p in relative.split("/") if p]
        if any(p in (".", "..") or "\\" in p or "\0" in p for p in parts):
            return ""
        target = root.joinpath(*parts).resolve() if parts else root
        if target != root and root not in target.parents:
            return ""
        return str(target / "index.html" if target.is_dir() else target)

    def list_directory(self, path):  # noqa: ANN001 - http.server's signature
        """Never list a folder."""
        self.send_error(HTTPStatus.NOT_FOUND, "Not found")
        return None

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        """Save a reader's answers to STUDY/answers/<reader>-<started>.json after checking them."""
        if urlsplit(self.path).path.rstrip("/") != "/answers":
            return self._json(HTTPStatus.NOT_FOUND, {"error": "POST answers to /answers"})
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
        if int(length) > MAX_POST_BYTES:
            self.close_connection = True
            return self._json(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"error": f"answers larger than {MAX_POST_BYTES // 1024} KB"},
            )
        try:
            data = json.loads(self.rfile.read(int(length)).decode("utf-8"))
            reader = check_answers(data, self.key)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": f"not JSON ({exc})"})
        except MedisynError as exc:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        name = save_answers(self.study / "answers", reader.id, data)
        self._json(HTTPStatus.CREATED, {"saved": name, "answers": len(reader.answers)})

    def _json(self, status: HTTPStatus, body: dict) -> None:
        payload = json.dumps(body).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except ConnectionError:  # the client went away (e.g. after an oversized post was refused)
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        if not self.quiet:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


def save_answers(folder: Path, reader_id: str, data: dict) -> str:
    """Write one submission atomically as <reader>-<started>.json (a resubmission of a session replaces it)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", reader_id)[:64].strip("._") or "reader"
    started = re.sub(r"\D", "", str(data.get("started") or ""))[:14] or time.strftime("%Y%m%d%H%M%S")
    name = f"{stem}-{started}.json"
    atomic_write_text(folder / name, json.dumps(data, indent=1) + "\n")
    return name


def make_server(study: str | Path, host: str = "127.0.0.1", port: int = 8000, quiet: bool = False):
    """A ThreadingHTTPServer for the study (port 0 picks a free one); call serve_forever() on it."""
    study = Path(study)
    key = load_key(study)
    if not (study / "site" / "index.html").is_file():
        raise MedisynError(f"{study / 'site'}: no index.html (rebuild the study)")
    handler = partial(StudyHandler, study=study, key=key, quiet=quiet)
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise MedisynError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from exc
