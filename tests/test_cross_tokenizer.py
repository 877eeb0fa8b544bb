"""Cross-tokenizer pieces on their own: response-token keys and the alignment they give, the
vocabulary map, a teacher top-k mapped onto the student's vocabulary, and ULD's rank buckets.

The pairs are tiny models on two genuinely different BPEs (testing/tiny.py ``vocabulary="other"``:
fewer merges over the same texts, other ids) with different chat templates (ChatML vs Llama 3).
"""

from __future__ import annotations

import pytest
import torch

from taid_vlm.errors import UserError
from taid_vlm.losses import LOSS_NAMES, EngineOptions, Head, TopK, divergence
from taid_vlm.losses.topk import student_buckets, topk_of_logits
from taid_vlm.losses.uld import Ranks, rank_ids, uld_per_token
from taid_vlm.models import adapt
from taid_vlm.models.cross_tokenizer import END, TextSide, VocabularyMap, align, map_topk, vocabulary_keys
from taid_vlm.testing.tiny import OTHER_FEWER_MERGES, build_tiny, tiny_records


@pytest.fixture(scope="module")
def pair():
    """A Qwen2 teacher (shared vocabulary, ChatML) and a Llama student (other vocabulary, Llama 3 tags)."""
    teacher = adapt(*build_tiny("qwen2", seed=1), role="teacher")
    student = adapt(*build_tiny("llama", seed=2, vocabulary="other"), role="student")
    return teacher, student, TextSide.of(teacher, "teacher=qwen2"), TextSide.of(student, "student=llama")


def _outputs(adapter, records):
    return adapter.response_outputs(records)


def test_keys_follow_the_adapters_response_tokens_and_pair_the_end_of_turn_markers(pair):
    teacher, student, t_side, s_side = pair
    records = tiny_records(with_images=False)
    for adapter, side in ((teacher, t_side), (student, s_side)):
        out = _outputs(adapter, records)
        for r, record in enumerate(records):
            ids, keys = side.response_tokens(record)
            assert ids == out.token_ids[out.record_index == r].tolist()
            turns = sum(m["role"] == "assistant" for m in record.messages)
            assert [k for k in keys if k is not None and k[1] == END] == [(t, END) for t in range(turns)]
    assert t_side.end_of_turn == "<|im_end|>" and s_side.end_of_turn == "<|eot_id|>"


def test_alignment_pairs_tokens_that_start_at_the_same_character(pair):
    teacher, student, t_side, s_side = pair
    records = tiny_records(with_images=False)
    t_out, s_out = _outputs(teacher, records), _outputs(student, records)
    alignment = align(s_side, t_side, records, s_out.token_ids, s_out.record_index, t_out.token_ids, t_out.record_index)
    assert 0.5 < alignment.num_aligned / alignment.num_student < 1.0  # the student splits some words finer
    assert alignment.num_student == s_out.num_tokens
    s_tok, t_tok = student.tokenizer, teacher.tokenizer
    for s_row, t_row in zip(alignment.student_rows.tolist(), alignment.teacher_rows.tolist()):
        assert s_out.record_index[s_row] == t_out.record_index[t_row]
        s_text = s_tok.decode(s_out.token_ids[s_row : s_row + 1])
        t_text = t_tok.decode(t_out.token_ids[t_row : t_row + 1])
        if s_text == "<|eot_id|>":
            assert t_text == "<|im_end|>"
        else:  # they start at the same character
            assert s_text[:1] == t_text[:1], (s_text, t_text)
    # "blue": teacher "Ġblue", student "Ġblu" + "e": the first tokens pair, the student's "e" does not
    record = records[1]
    s_ids, s_keys = s_side.response_tokens(record)
    pieces = s_tok.convert_ids_to_tokens(s_ids)
    assert "Ġblu" in pieces and pieces[pieces.index("Ġblu") + 1] == "e"
    _, t_keys = t_side.response_tokens(record)
    assert s_keys[pieces.index("Ġblu")] in t_keys and s_keys[pieces.index("Ġblu") + 1] not in t_keys


def test_identical_tokenizers_align_every_token_to_itself():
    a = adapt(*build_tiny("qwen2", seed=1), role="teacher")
    b = adapt(*build_tiny("qwen2", seed=2), role="student")
    records = tiny_records(with_images=False)
    a_out, b_out = _outputs(a, records), _outputs(b, records)
    alignment = align(TextSide.of(b, "student"), TextSide.of(a, "teacher"), records, b_out.token_ids, b_out.record_index,
                      a_out.token_ids, a_out.record_index)
    assert torch.equal(alignment.student_rows, torch.arange(b_out.num_tokens))
    assert torch.equal(alignment.teacher_rows, torch.arange(a_out.num_tokens))
    table = VocabularyMap.build(TextSide.of(a, "teacher"), TextSide.of(b, "student")).table
    assert torch.equal(table, torch.arange(len(a.tokenizer)))


def test_vocabulary_map_pairs_entries_by_bytes_and_the_markers_by_role(pair):
    teacher, student, t_side, s_side = pair
    vocab = VocabularyMap.build(t_side, s_side, teacher_rows=teacher.lm_head().weight.shape[0] + 4)
    t_tok, s_tok = teacher.tokenizer, student.tokenizer
    assert vocab.table.shape[0] == teacher.lm_head().weight.shape[0] + 4 and (vocab.table[-4:] == -1).all()
    assert vocab.table[t_tok.convert_tokens_to_ids("Ġred")] == s_tok.convert_tokens_to_ids("Ġred")
    assert vocab.table[t_tok.convert_tokens_to_ids("Ġblue")] == -1  # the student writes it as "Ġblu" + "e"
    assert vocab.table[t_tok.convert_tokens_to_ids("<|im_end|>")] == s_tok.convert_tokens_to_ids("<|eot_id|>")
    assert vocab.table[t_tok.convert_tokens_to_ids("<image>")] == s_tok.convert_tokens_to_ids("<image>")
    assert (vocab.teacher_entries, vocab.student_entries) == (len(t_tok), len(t_tok) - OTHER_FEWER_MERGES)
    assert len(s_tok) - 50 < vocab.shared <= len(s_tok)  # the smaller BPE's merges are the larger one's first ones


def test_sentencepiece_and_byte_level_entries_meet_as_bytes():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<pad>", *(f"<0x{b:02X}>" for b in range(256)), "\u2581", "r", "e", "d", "\u2581r", "\u2581re", "\u2581red"]
    merges = [("\u2581", "r"), ("\u2581r", "e"), ("\u2581re", "d")]
    core = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=merges, byte_fallback=True))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    piece = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>")
    assert piece.convert_ids_to_tokens(piece("red é", add_special_tokens=False)["input_ids"])[:2] == ["\u2581red", "\u2581"]
    keys = vocabulary_keys(piece)
    assert keys[pieces.index("\u2581red")] == ("bytes", b" red") and keys[1 + 0xE2] == ("bytes", b"\xe2")
    byte_level = build_tiny("qwen2")[1]
    assert ("bytes", b" red") in set(vocabulary_keys(byte_level))  # "Ġred"


def test_mapping_sums_duplicates_sends_missing_entries_to_the_tail_and_keeps_the_mass():
    logits = torch.randn(5, 12)
    topk = topk_of_logits(logits, 6)
    table = torch.tensor([3, 3, -1, 0, 1, -1, 2, 4, -1, 5, 6, 7])  # 0 and 1 both become 3; 2, 5, 8 are missing
    mapped, mass = map_topk(topk, table)
    probs = logits.softmax(-1)
    for row in range(5):
        expected: dict[int, float] = {}
        for teacher_id in topk.ids[row].tolist():
            if table[teacher_id] >= 0:
                expected[int(table[teacher_id])] = expected.get(int(table[teacher_id]), 0.0) + float(probs[row, teacher_id])
        got = {int(i): float(p) for i, p in zip(mapped.ids[row], mapped.logprobs[row].exp()) if i >= 0}
        assert got.keys() == expected.keys()
        for key in got:
            assert got[key] == pytest.approx(expected[key], rel=1e-5)
        assert float(mass[row]) == pytest.approx(sum(expected.values()), rel=1e-5)
        total = torch.logaddexp(mapped.logprobs[row].logsumexp(-1), mapped.tail[row]).exp()
        assert float(total) == pytest.approx(1.0, abs=1e-5)
        assert (mapped.logprobs[row][mapped.ids[row] < 0] == -torch.inf).all()
        ranked = mapped.logprobs[row][mapped.ids[row] >= 0]
        assert torch.equal(ranked, ranked.sort(descending=True).values)


def _uld_reference(student_logits, teacher_logits):
    """The paper's form: sorted probability vectors, the shorter padded with zeros, L1 per token."""
    q = student_logits.softmax(-1).sort(-1, descending=True).values
    p = teacher_logits.softmax(-1).sort(-1, descending=True).values
    width = max(q.shape[-1], p.shape[-1])
    q, p = (torch.nn.functional.pad(x, (0, width - x.shape[-1])) for x in (q, p))
    return (q - p).abs().sum(-1)


def test_uld_on_rank_buckets_is_the_papers_sorted_l1_when_k_covers_the_teachers_vocabulary():
    torch.manual_seed(0)
    student_logits = torch.randn(4, 20, dtype=torch.float64, requires_grad=True)
    teacher_logits = torch.randn(4, 13, dtype=torch.float64)
    teacher = topk_of_logits(teacher_logits, 13)  # the whole teacher: no tail; the paper pads it with zeros
    ids = rank_ids(student_logits.detach(), teacher.ids)
    assert torch.equal(ids, student_logits.detach().topk(13).indices)
    buckets = student_buckets(student_logits, ids)
    teacher_buckets = torch.cat([teacher.logprobs, teacher.tail.unsqueeze(-1)], dim=-1)
    ours = uld_per_token(buckets, teacher_buckets)
    reference = _uld_reference(student_logits, teacher_logits)
    torch.testing.assert_close(ours, reference)
    g_ours, = torch.autograd.grad(ours.sum(), student_logits)
    g_ref, = torch.autograd.grad(_uld_reference(student_logits, teacher_logits).sum(), student_logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_uld_with_a_short_top_k_is_a_lower_bound_and_an_empty_teacher_row_costs_nothing():
    torch.manual_seed(1)
    student_logits, teacher_logits = torch.randn(6, 40), torch.randn(6, 50)
    teacher = topk_of_logits(teacher_logits, 8)
    ids = rank_ids(student_logits, teacher.ids)
    teacher_buckets = torch.cat([teacher.logprobs, teacher.tail.unsqueeze(-1)], dim=-1)
    short = uld_per_token(student_buckets(student_logits, ids), teacher_buckets)
    assert (short <= _uld_reference(student_logits, teacher_logits) + 1e-6).all() and (short > 0).all()
    empty_ids = torch.full_like(teacher.ids, -1)
    empty_teacher = torch.cat([torch.full_like(teacher.logprobs, -torch.inf), torch.zeros(6, 1)], dim=-1)
    nothing = uld_per_token(student_buckets(student_logits, rank_ids(student_logits, empty_ids)), empty_teacher)
    assert torch.equal(nothing, torch.zeros(6))


def test_a_tokenizer_without_offsets_is_refused_naming_the_model(pair):
    from transformers import ByT5Tokenizer

    teacher = pair[0]
    with pytest.raises(UserError, match=r"student=byt5-student: its tokenizer \(ByT5Tokenizer\) reports no character "
                                        r"offsets.*fast tokenizer"):
        TextSide("student=byt5-student", ByT5Tokenizer(), teacher.chat_template, teacher.family_info, frozenset(), "")


# ---- the engine: empty slots and ranks -----------------------------------------------------------


def _with_empty_slots(n=6, vocab=30, k=8, seed=0):
    """A teacher top-k whose rows keep 8, 5, 3, 0, 8, 1 entries (the rest empty, their mass in the tail)."""
    g = torch.Generator().manual_seed(seed)
    teacher = topk_of_logits(torch.randn(n, vocab, generator=g) * 2, k)
    keep = torch.tensor([8, 5, 3, 0, 8, 1])[:n]
    empty = torch.arange(k).unsqueeze(0) >= keep.unsqueeze(1)
    dropped = torch.where(empty, teacher.logprobs, torch.full_like(teacher.logprobs, -torch.inf)).logsumexp(-1)
    tail = torch.logaddexp(teacher.tail, dropped)
    return TopK(teacher.ids.masked_fill(empty, -1), teacher.logprobs.masked_fill(empty, -torch.inf), tail), keep


@pytest.mark.parametrize("name", [n for n in LOSS_NAMES if n != "sft"])
def test_empty_slots_are_no_buckets_and_a_row_of_them_costs_nothing(name):
    """Each row equals the same loss over its kept entries only; the all-tail row scores 0, no gradient."""
    torch.manual_seed(3)
    topk, keep = _with_empty_slots()
    hidden, weight = torch.randn(6, 16, dtype=torch.float64, requires_grad=True), torch.randn(30, 16, dtype=torch.float64)
    params = {"t": 0.6} if name == "taid" else {}
    labels = torch.randint(0, 30, (6,))
    chunked = divergence(name, Head(hidden, weight), topk, labels=labels, num_tokens=6.0,
                         options=EngineOptions(chunk_size=4), **params)
    g_chunked, = torch.autograd.grad(chunked, hidden)
    logits = hidden @ weight.t()
    rows = []
    for r in range(6):
        if keep[r] == 0:
            continue
        one = TopK(topk.ids[r:r + 1, : keep[r]], topk.logprobs[r:r + 1, : keep[r]], topk.tail[r:r + 1])
        rows.append(divergence(name, logits[r:r + 1], one, labels=labels[r:r + 1], num_tokens=1.0, **params))
    reference = torch.stack(rows).sum() / 6
    g_reference, = torch.autograd.grad(reference, hidden)
    torch.testing.assert_close(chunked, reference)
    torch.testing.assert_close(g_chunked, g_reference)
    assert torch.equal(g_chunked[3], torch.zeros(16, dtype=torch.float64))  # the all-tail row


def test_uld_runs_in_the_chunked_engine_and_on_the_plain_path_alike_and_refuses_token_teachers():
    torch.manual_seed(4)
    hidden, weight = torch.randn(7, 12, requires_grad=True), torch.randn(40, 12)
    teacher = topk_of_logits(torch.randn(7, 50), 8)
    ranks = Ranks.of(TopK(teacher.ids.clone(), teacher.logprobs, teacher.tail))
    ranks.ids[2] = -1  # an unaligned token: every slot empty
    ranks.logprobs[2], ranks.tail[2] = -torch.inf, 0.0
    labels = torch.randint(0, 40, (7,))
    options = EngineOptions(chunk_size=3, ce_weight=0.5)
    chunked = divergence("uld", Head(hidden, weight), ranks, labels=labels, options=options)
    g_chunked, = torch.autograd.grad(chunked, hidden)
    plain = divergence("uld", hidden @ weight.t(), ranks, labels=labels, options=options)
    g_plain, = torch.autograd.grad(plain, hidden)
    torch.testing.assert_close(chunked, plain)
    torch.testing.assert_close(g_chunked, g_plain)
    logits = (hidden @ weight.t()).detach()
    ids = rank_ids(logits, ranks.ids)
    by_hand = uld_per_token(student_buckets(logits, ids), torch.cat([ranks.logprobs, ranks.tail[:, None]], -1))
    assert by_hand[2] == 0 and (by_hand[[0, 1, 3, 4, 5, 6]] > 0).all()
    ce = torch.nn.functional.cross_entropy(logits, labels)
    torch.testing.assert_close(chunked.detach(), 0.5 * by_hand.mean() + 0.5 * ce)
    with pytest.raises(ValueError, match="give the teacher as losses.uld.Ranks"):
        divergence("uld", Head(hidden, weight), teacher)
    with pytest.raises(ValueError, match="needs a ranked loss"):
        divergence("fkl", Head(hidden, weight), ranks)
