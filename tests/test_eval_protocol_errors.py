"""Every malformed field of a prediction file is a one-line error naming the file, the query and
the field, through `load_predictions` and through `stvg-ros eval score` (exit 2, one stderr line)."""

from __future__ import annotations

import json

import pytest

from stvg_ros.cli import eval as eval_cli
from stvg_ros.cli.main import build_parser
from stvg_ros.evaluation import EvalError
from stvg_ros.evaluation.loaders import load_annotations
from stvg_ros.evaluation.predictions import load_predictions

ANNOTATIONS = {"7_walk.mp4": {"bbox": [[10, 20, 30, 40]] * 5, "st_frame": 3, "img_num": 100, "img_size": [480, 640],
                              "English": "the man walks", "st_time": 0.6, "ed_time": 1.4}}  # fmt: skip
GOOD = {"sted": [3, 8], "boxes": {"3": [10, 20, 40, 60]}}

# (entry of query "7_walk" as JSON text, the field the message must name)
MALFORMED = [
    ('{"sted": ["3", 8]}', "field 'sted'"),
    ('{"sted": [3, "eight"]}', "field 'sted'"),
    ('{"sted": [NaN, 8]}', "field 'sted'"),
    ('{"sted": [3, Infinity]}', "field 'sted'"),
    ('{"sted": [3.5, 8]}', "field 'sted'"),
    ('{"sted": 3}', "field 'sted'"),
    ('{"sted": [[3, 8]]}', "field 'sted'"),
    ('{"sted": [3, 8, 9]}', "field 'sted'"),
    ('{"sted": [true, 8]}', "field 'sted'"),
    ('{"sted": [8, 3]}', "field 'sted'"),
    ('{"sted": null}', "field 'sted'"),
    ('{"st_frame": "3", "ed_frame": 7}', "field 'st_frame'"),
    ('{"st_frame": 3, "ed_frame": [7]}', "field 'ed_frame'"),
    ('{"sted": [3, 8], "boxes": [[10, 20, 40, 60]]}', "field 'boxes'"),
    ('{"sted": [3, 8], "boxes": "none"}', "field 'boxes'"),
    ('{"sted": [3, 8], "boxes": {"3": [[[10, 20, 40, 60]]]}}', "field 'boxes' frame 3"),
    ('{"sted": [3, 8], "boxes": {"3": [[10, 20, 40, 60], [0, 0, 5, 5]]}}', "field 'boxes' frame 3"),
    ('{"sted": [3, 8], "boxes": {"3": [10, 20, 40]}}', "field 'boxes' frame 3"),
    ('{"sted": [3, 8], "boxes": {"3": ["10", 20, 40, 60]}}', "field 'boxes' frame 3"),
    ('{"sted": [3, 8], "boxes": {"3": [10, 20, NaN, 60]}}', "field 'boxes' frame 3"),
    ('{"sted": [3, 8], "boxes": {"3": [10, 20, -Infinity, 60]}}', "field 'boxes' frame 3"),
    ('{"sted": [3, 8], "boxes": {"3": {"x1": 10}}}', "field 'boxes' frame 3"),
    ('{"sted": [3, 8], "boxes": {"3": [40, 20, 10, 60]}}', "field 'boxes' frame 3"),
    ('{"sted": [3, 8], "boxes": {"third": [10, 20, 40, 60]}}', "field 'boxes' frame third"),
    ('{"sted": [3, 8], "span_s": ["0.6", "1.4"]}', "field 'span_s'"),
    ('{"sted": [3, 8], "span_s": [NaN, 1.4]}', "field 'span_s'"),
    ('{"sted": [3, 8], "span_s": [0.6, Infinity]}', "field 'span_s'"),
    ('{"sted": [3, 8], "span_s": [0.6]}', "field 'span_s'"),
    ('{"sted": [3, 8], "span_s": "0.6-1.4"}', "field 'span_s'"),
    ('{"sted": [3, 8], "span_s": [[0.6, 1.4]]}', "field 'span_s'"),
    ('{"sted": [3, 8], "target_id": "2"}', "field 'target_id'"),
    ('{"sted": [3, 8], "target_id": true}', "field 'target_id'"),
    ('{"sted": [3, 8], "target_id": 2.5}', "field 'target_id'"),
    ('{"sted": [3, 8], "target_id": [2]}', "field 'target_id'"),
    ('{"sted": [3, 8], "target_id": NaN}', "field 'target_id'"),
    ("[3, 8]", "expected an object"),
    ('"3-8"', "expected an object"),
    ('{"boxes": {}}', "no span"),
]


def cli(argv: list[str]) -> int:
    """`stvg-ros ARGV` in this process: the CLI's parser, then `stvg_ros.cli.eval.run`."""
    return eval_cli.run(build_parser(argv).parse_args(argv))


@pytest.fixture
def files(tmp_path):
    annotations = tmp_path / "ann.json"
    annotations.write_text(json.dumps(ANNOTATIONS))
    return annotations, tmp_path / "pred.json"


@pytest.mark.parametrize(("entry", "field"), MALFORMED)
def test_malformed_field_through_load_predictions(files, entry, field):
    _, predictions = files
    predictions.write_text('{"7_walk": ' + entry + "}")
    with pytest.raises(EvalError) as caught:
        load_predictions(predictions)
    message = str(caught.value)
    assert str(predictions) in message and "prediction '7_walk'" in message and field in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("entry", "field"), MALFORMED)
def test_malformed_field_through_the_cli(files, capsys, entry, field):
    annotations, predictions = files
    predictions.write_text('{"7_walk": ' + entry + "}")
    code = cli(["eval", "score", "--annotations", str(annotations), "--predictions", str(predictions)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stvg-ros eval: error: "), err
    assert str(predictions) in lines[0] and "'7_walk'" in lines[0] and field in lines[0], lines[0]


def test_the_good_entry_scores(files, capsys):
    annotations, predictions = files
    predictions.write_text(json.dumps({"7_walk": GOOD}))
    assert cli(["eval", "score", "--annotations", str(annotations), "--predictions", str(predictions), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_predicted"] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "must be a JSON object keyed by query id, got list"),
        (
            '{"test_hcstvg_video_predictions": {"0": {"sted": [3, 8]}}, "test_hcstvg_predictions": {"0-3": {}}}',
            "predictions '0-3': key must be '<video_id>_<frame_id>'",
        ),
        ('{"video_predictions": {"5": {"sted": [3, 8]}}, "predictions": {}}', "video id '5' is not an index"),
        ('{"video_predictions": {"0": {"sted": ["a", 8]}}, "predictions": {}}', "prediction '7_walk' field 'sted'"),
        ('{"video_predictions": {"0": [3, 8]}, "predictions": {}}', "video_predictions '0': expected an object"),
    ],
)
def test_malformed_files_and_tubedetr_dumps(files, content, message):
    annotations, predictions = files
    predictions.write_text(content)
    with pytest.raises(EvalError) as caught:
        load_predictions(predictions, load_annotations(annotations))
    assert str(predictions) in str(caught.value) and message in str(caught.value)


def test_a_tubedetr_dump_needs_the_annotations(files):
    _, predictions = files
    predictions.write_text(
        '{"video_predictions": {"0": {"sted": [3, 8]}}, "predictions": {"0_3": {"boxes": [[1, 2, 3, 4]]}}}'
    )
    with pytest.raises(EvalError, match="keyed by its video index"):
        load_predictions(predictions)
