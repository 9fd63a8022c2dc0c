"""Video-R1 records -> trainer rows (prompt text, media paths, columns, errors naming the record, JSON / JSONL files)
and `video_r1_accuracy_reward`'s rule per problem type against hand-computed values."""

import json
import os

import pytest
from PIL import Image

from trl_attention.rewards import PROMPT_FORMATS
from trl_attention.rewards import PROBLEM_TYPES, edit_distance, rouge_l_f1, video_r1_accuracy_reward
from trl_attention.video.videor1 import (
    ANSWER_HINTS,
    VideoR1Error,
    convert_video_r1,
    load_video_r1,
    read_video_r1_records,
    write_synthetic_video_r1,
)

REASONING, ANSWER = PROMPT_FORMATS["reasoning"], PROMPT_FORMATS["answer"]


def _record(**fields):
    record = {
        "problem_id": 7,
        "problem": "What is moving?",
        "data_type": "video",
        "problem_type": "multiple choice",
        "options": ["A. a cat", "B. a dog"],
        "process": "<think>It barks.</think>",
        "solution": "<answer>B</answer>",
        "path": "./clips/a.mp4",
        "data_source": "test",
    }
    return {**record, **fields}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Six records with real media, one per (data_type, problem_type) pair of the synthetic plan."""
    path = write_synthetic_video_r1(tmp_path_factory.mktemp("videor1"))
    return path, json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ the converter


def test_synthetic_records_cover_both_media_and_every_problem_type(synthetic):
    path, records = synthetic
    assert {r["data_type"] for r in records} == {"image", "video"}
    assert {r["problem_type"] for r in records} == set(PROBLEM_TYPES) == set(ANSWER_HINTS)
    for r in records:
        assert os.path.isfile(path.parent / r["path"]) and r["solution"].startswith("<answer>")


def test_rows_carry_the_prompt_media_and_answer(synthetic):
    path, records = synthetic
    dataset = convert_video_r1(records, path.parent, check_files=True)
    assert dataset.column_names[:3] == ["prompt", "image", "video"]
    assert {"solution", "problem_type", "problem_id", "process", "data_source"} <= set(dataset.column_names)
    for record, row in zip(records, dataset):
        parts = row["prompt"][0]["content"]
        assert row["prompt"][0]["role"] == "user" and [p["type"] for p in parts] == [record["data_type"], "text"]
        options = "\nOptions:\n" + "\n".join(record["options"]) if record["options"] else ""
        hint = ANSWER_HINTS[record["problem_type"]]
        assert parts[1]["text"] == f"{record['problem']}{options}\n{hint}{REASONING}"
        media = os.path.abspath(path.parent / record["path"])
        if record["data_type"] == "video":
            assert row["video"] == media and row["image"] is None
        else:  # decoded by the Image feature, as TRL's image rows expect
            assert isinstance(row["image"], Image.Image) and row["video"] is None
        assert row["solution"] == record["solution"][len("<answer>") : -len("</answer>")]
        assert (row["problem_type"], row["problem_id"]) == (record["problem_type"], record["problem_id"])


def test_exact_prompt_of_a_multiple_choice_video_and_ral_zero(tmp_path):
    rows = convert_video_r1([_record()], tmp_path, as_dataset=False)
    assert rows == [
        {
            "prompt": [
                {
                    "role": "user",
                    "content": [
                        {"type": "video"},
                        {
                            "type": "text",
                            "text": "What is moving?\nOptions:\nA. a cat\nB. a dog\nAnswer with the letter of one "
                            "option (e.g. A). Think step by step inside <think></think>, then give the final answer "
                            "inside <answer></answer>.",
                        },
                    ],
                }
            ],
            "video": str(tmp_path / "clips" / "a.mp4"),
            "solution": "B",
            "problem_type": "multiple choice",
            "problem_id": 7,
            "process": "<think>It barks.</think>",
            "data_source": "test",
        }
    ]
    zero = convert_video_r1([_record()], tmp_path, ral_zero=True, as_dataset=False)[0]
    text = zero["prompt"][0]["content"][1]["text"]
    assert text.endswith(ANSWER) and "<think>" not in text


def test_columns_follow_the_media_kinds_and_templates(tmp_path):
    image = _record(data_type="image", path="x.png", problem_type="numerical", solution="<answer>3</answer>")
    only_images = convert_video_r1([image], tmp_path)
    assert "video" not in only_images.column_names and "image" in only_images.column_names
    only_videos = convert_video_r1([_record()], tmp_path)
    assert "image" not in only_videos.column_names
    bare = _record(problem_type="Free_Form", solution="a dog", options=None)  # any spelling; untagged solution
    row = convert_video_r1([bare], tmp_path, prompt_template="Q: {question} ({hint})", as_dataset=False)[0]
    assert row["prompt"][0]["content"][1]["text"] == "Q: What is moving? (Answer in a short phrase or sentence.)"
    assert (row["problem_type"], row["solution"]) == ("free-form", "a dog")
    for template, message in [("{question} {answer}", "cannot be filled"), ("no question", "has no {question}")]:
        with pytest.raises(VideoR1Error, match=message):
            convert_video_r1([_record()], tmp_path, prompt_template=template)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"solution": None}, r"missing field\(s\) \['solution'\]"),
        ({"data_type": "audio"}, "unknown data_type 'audio'"),
        ({"problem_type": "essay"}, "unknown problem_type 'essay'"),
        ({"options": []}, "a multiple-choice record needs `options`"),
        (
            {"solution": "<answer>E</answer>"},
            r"multiple-choice solution 'E' is not the letter of an option \['A', 'B'\]",
        ),
        ({"problem_type": "numerical", "solution": "<answer>many</answer>"}, "numerical solution 'many' is not a"),
        ({"solution": "<answer> </answer>"}, "solution '<answer> </answer>' has an empty answer"),
        ({"path": ""}, "path must be a non-empty string"),
    ],
)
def test_malformed_records_name_their_index(bad, message, tmp_path):
    records = [_record(problem_id=i) for i in range(3)]
    records[2] = {**records[2], **bad}
    with pytest.raises(VideoR1Error, match=rf"Video-R1 record 2 \(problem_id 2\): {message}"):
        convert_video_r1(records, tmp_path)


def test_missing_files_and_non_records(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.mp4").write_bytes(b"")
    records = [_record(), _record(problem_id=None, path="clips/gone.mp4")]
    assert len(convert_video_r1(records, tmp_path)) == 2  # files are only checked when asked
    gone = str(tmp_path / "clips" / "gone.mp4")
    with pytest.raises(VideoR1Error, match=rf"Video-R1 record 1: video file '{gone}' does not exist"):
        convert_video_r1(records, tmp_path, check_files=True)
    with pytest.raises(VideoR1Error, match="Video-R1 record 0: expected a mapping of field: value, got list"):
        convert_video_r1([["not", "a", "record"]], tmp_path)
    with pytest.raises(VideoR1Error, match="no Video-R1 records"):
        convert_video_r1([], tmp_path)


# ------------------------------------------------------------------------------------------------ record files


def test_json_and_jsonl_files_load_the_same_rows(synthetic, tmp_path):
    path, records = synthetic
    lines = tmp_path / "records.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in records[:3]) + "\n\n" + json.dumps(records[3]) + "\n")
    assert read_video_r1_records(lines) == records[:4]
    from_json = load_video_r1(path, as_dataset=False)  # the root defaults to the file's directory
    from_lines = load_video_r1(lines, path.parent, as_dataset=False)
    assert from_lines == from_json[:4]
    assert from_json[0]["video"] == os.path.abspath(path.parent / records[0]["path"])


def test_record_file_errors_and_subsets(synthetic, tmp_path):
    path, records = synthetic
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(records[0]) + "\n{not json\n")
    with pytest.raises(VideoR1Error, match="broken.jsonl line 2: not valid JSON"):
        read_video_r1_records(broken)
    with pytest.raises(VideoR1Error, match="does not exist"):
        read_video_r1_records(tmp_path / "none.json")
    subset = load_video_r1(path, num_samples=3, seed=1, as_dataset=False)
    ids = [r["problem_id"] for r in subset]
    again = load_video_r1(path, num_samples=3, seed=1, as_dataset=False)
    assert len(ids) == 3 and ids == sorted(ids) and ids == [r["problem_id"] for r in again]
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps([*records[:5], {**records[5], "data_type": "gif"}]))
    raised = 0
    for seed in range(10):  # subsets of 5 with the last record: it is the 5th row there, still named record 5
        try:
            load_video_r1(bad_file, path.parent, num_samples=5, seed=seed)
        except VideoR1Error as error:
            assert str(error).startswith("Video-R1 record 5 (problem_id 5): unknown data_type 'gif'")
            raised += 1
    assert 0 < raised < 10


def test_rows_score_their_own_answers(synthetic):
    path, _ = synthetic
    rows = load_video_r1(path, as_dataset=False)
    completions = [f"<think>...</think><answer>{r['solution']}</answer>" for r in rows]
    solutions, kinds = [r["solution"] for r in rows], [r["problem_type"] for r in rows]
    assert video_r1_accuracy_reward(completions, solutions, kinds) == [1.0] * len(rows)


# ------------------------------------------------------------------------------------------------ the reward


def _score(kind, answers, solution):
    completions = [a if a is None or "<" in a else f"<think>t</think><answer>{a}</answer>" for a in answers]
    return video_r1_accuracy_reward(completions, [solution] * len(answers), [kind] * len(answers))


def test_multiple_choice_matches_the_letter():
    answers = ["B", "(b)", "B. a dog", "b.", "C", "a dog", "B a dog", "<answer></answer>", "<think>B</think> B"]
    assert _score("multiple choice", answers, "<answer>B</answer>") == [1, 1, 1, 1, 0, 0, 0, 0, 0]  # untagged: 0
    assert _score("multiple choice", ["A"], "A. a cat") == [1.0]


def test_numerical_is_equality_at_two_decimals():
    answers = ["3.14159", "3.149", "3.14", "+3.140", "about 3", "3,14", "<answer>3.14</answer> then <answer>2"]
    assert _score("numerical", answers, "3.14") == [1, 0, 1, 1, 0, 0, 1]
    assert _score("numerical", ["1,024", "1024.004", "1e3", "-2"], "1024") == [1, 1, 0, 0]


def test_regression_is_one_minus_relative_error():
    scores = _score("regression", ["8", "10.5", "25", "10", "ten", "-10"], "10")
    assert scores == pytest.approx([0.8, 0.95, 0.0, 1.0, 0.0, 0.0])  # 1 - 2/10, 1 - 0.5/10, clipped, ...
    assert _score("regression", ["0", "0.1"], "0") == [1.0, 0.0]


def test_ocr_is_one_minus_word_error_rate():
    truth = "the quick brown fox"
    answers = ["the quick brown fox", "THE QUICK BROWN FOX", "the quick brwn fox", "quick brown fox jumps over"]
    answers += ["a b c d e f g h i", "the quick brown fox."]
    assert _score("OCR", answers, truth) == [1.0, 1.0, 0.75, 0.25, 0.0, 0.75]
    assert edit_distance("kitten", "sitting") == 3 and edit_distance([], ["a"]) == 1


def test_free_form_is_rouge_l_f1():
    answers = ["A red circle.", "the red circle", "red", "Circle, red!", "blue square"]
    expected = [1.0, 2 / 3, 0.5, 0.4, 0.0]
    assert _score("free-form", answers, "a red circle") == pytest.approx(expected)
    assert rouge_l_f1("", "a") == 0.0


def test_reward_formats_and_errors():
    conversation = [[{"role": "assistant", "content": "<answer>A</answer>"}]]
    assert video_r1_accuracy_reward(conversation, ["A"], ["multiple choice"]) == [1.0]
    assert video_r1_accuracy_reward(["<answer>A</answer>"], [None], ["multiple choice"]) == [None]
    assert video_r1_accuracy_reward(["<answer>A</answer>"], ["A"], ["Multiple_Choice"]) == [1.0]
    with pytest.raises(ValueError, match="unknown problem_type 'essay'"):
        video_r1_accuracy_reward(["<answer>A</answer>"], ["A"], ["essay"])


def test_a_record_file_checks_its_media_by_default(synthetic, tmp_path):
    """Was `check_files=False`: a missing image trained until its row was sampled, then FileNotFoundError."""
    path, records = synthetic
    gone = [dict(r) for r in records]
    gone[2]["path"] = "no/such/file.png"
    bad = tmp_path / "gone.json"
    bad.write_text(json.dumps(gone))
    with pytest.raises(VideoR1Error, match=r"record 2 .*no/such/file.png"):
        load_video_r1(bad, path.parent)
    assert len(load_video_r1(bad, path.parent, check_files=False, as_dataset=False)) == len(records)
