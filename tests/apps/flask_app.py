"""The Flask app of the functional tests: `hardserve tests.apps.flask_app:app`, or
`tests.apps.flask_app:create_app()`."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response, jsonify, request, send_file, stream_with_context

from tests.apps import common


def create_app(*, propagate_exceptions: bool = False) -> Flask:
    """`propagate_exceptions` lets a view's exception out of Flask to the server, which must
    then answer its own generic 500; by default Flask renders the 500 itself."""
    app = Flask(__name__)
    app.config.update(
        PROPAGATE_EXCEPTIONS=propagate_exceptions,
        # A production app bounds its request bodies. It also matters under wsgiref's validator:
        # with a limit, werkzeug reads wsgi.input through a LimitedStream that always passes a
        # size to read(), which is all PEP 3333 promises; without one, werkzeug calls read()
        # with no argument for urlencoded forms and the validator rejects that call.
        MAX_CONTENT_LENGTH=8 * 1024 * 1024,
    )

    @app.get("/")
    def index() -> str:
        return common.page("flask")

    @app.post("/form")
    def form() -> Response:
        return jsonify(fields=request.form.to_dict(flat=False))

    @app.post("/upload")
    def upload() -> Response:
        received = request.files["file"]
        summary = common.describe_upload(received.filename, received.read())
        return jsonify(file=summary, fields=request.form.to_dict(flat=False))

    @app.get("/stream")
    def stream() -> Response:
        count = common.stream_count(request.args.get("count"))

        def generate() -> Iterator[bytes]:
            # Runs while the server iterates, after the view has returned: only
            # stream_with_context keeps `request` usable here.
            gate = request.args.get("gate")
            for index in range(count):
                yield common.stream_chunk(index)
                if index == 0:
                    marker = common.wait_for_gate(gate)
                    if marker:
                        yield marker
                        return

        return Response(stream_with_context(generate()), mimetype="text/plain")

    @app.get("/download")
    def download() -> Response:
        # send_file passes the open file to wsgi.file_wrapper, the server's zero-copy path.
        return send_file(
            common.download_path(),
            mimetype="application/octet-stream",
            download_name="payload.bin",
        )

    @app.get("/boom")
    def boom() -> str:
        common.fail()
        return "unreachable"

    @app.get("/stream-boom")
    def stream_boom() -> Response:
        def generate() -> Iterator[bytes]:
            yield common.stream_chunk(0)
            common.fail()

        return Response(generate(), mimetype="text/plain")

    return app


app = create_app()
