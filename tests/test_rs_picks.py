"""Rejection sampling's pick per prompt: the best by reward, the best that ended, and on helpful
prompts the best that does not refuse (read by the shipped refusal classifier)."""

from __future__ import annotations

import json

from flywheel.evaluation.refusal import refusals
from flywheel.policy.finetune import Candidate
from flywheel.stages.rejection_sampling import (
    may_keep_when_ending,
    only_refusals,
    pass_over_refusals,
    pick_best,
)

REFUSAL = "I'm sorry, but I can't help with that."
CAKE = "Cream the butter and sugar, add the eggs and flour, and bake at 180 C for 25 minutes."
CAKE_SHORT = "Mix butter, sugar, eggs and flour, then bake it for about 25 minutes at 180 C."
THEFT = "I'm sorry, but I can't help with that. Stealing a car is a crime that hurts its owner."


def _draws():
    return [
        Candidate("h1", "helpful", REFUSAL, 0.9),     # the reward model's favourite
        Candidate("h2", "helpful", CAKE, 0.7),        # ran to the token limit
        Candidate("h3", "helpful", CAKE_SHORT, 0.6),
        Candidate("s1", "harmful", THEFT, 0.8),       # a refusal where it belongs
        Candidate("s2", "harmful", "Break the window, then hotwire it.", 0.3),
        Candidate("r1", "refused", REFUSAL, 0.5),     # a helpful prompt with nothing else drawn
    ]


def test_the_classifier_reads_the_draws_as_the_cases_below_need():
    assert refusals([REFUSAL, CAKE, CAKE_SHORT, THEFT]) == [True, False, False, True]


def test_pick_best_prefers_answers_that_ended_where_one_did():
    draws = _draws()
    assert {p: c.sample_id for p, c in pick_best(draws, None).items()} == {
        "helpful": "h1", "harmful": "s1", "refused": "r1"}
    ended = {"h1", "h3", "s2"}  # h2, s1 and r1 ran to the limit
    assert {p: c.sample_id for p, c in pick_best(draws, ended).items()} == {
        "helpful": "h1", "harmful": "s2", "refused": "r1"}


def test_a_refusal_on_a_helpful_prompt_is_passed_over_for_the_next_best():
    draws = _draws()
    calls = []

    def counting(texts):
        calls.append(len(texts))
        return refusals(texts)

    helpful = {"helpful", "refused"}
    best, passed = pass_over_refusals(pick_best(draws, None), draws, None, helpful, counting)
    # the refusal gives way to the best answer left; on the harmful prompt the refusal stays;
    # where every draw refuses, the best of them stays
    assert {p: c.sample_id for p, c in best.items()} == {
        "helpful": "h2", "harmful": "s1", "refused": "r1"}
    assert passed == 1
    assert calls == [2, 1]  # the picks only, each once: not every draw
    # with prefer_ended the next best is the next best that ended
    best, passed = pass_over_refusals(pick_best(draws, {"h1", "h3"}), draws, {"h1", "h3"},
                                      helpful, refusals)
    assert best["helpful"].sample_id == "h3" and passed == 1


def test_on_harmful_prompts_a_refusal_cut_by_the_limit_still_beats_an_answer_that_ended():
    def row(sample_id, prompt_id, tokens):
        return {"id": sample_id, "prompt_id": prompt_id, "token_count": tokens,
                "params": json.dumps({"max_new_tokens": 96})}

    rows = [row("h1", "helpful", 20), row("h2", "helpful", 96), row("h3", "helpful", 40),
            row("s1", "harmful", 96), row("s2", "harmful", 30), row("r1", "refused", 96)]
    ended = may_keep_when_ending(rows, {"harmful"})
    assert ended == {"h1", "h3", "s1", "s2"}
    # s1, the refusal, ran to the limit and is kept all the same; on the helpful prompt the
    # best that ended; where nothing ended, the best of all
    assert {p: c.sample_id for p, c in pick_best(_draws(), ended).items()} == {
        "helpful": "h1", "harmful": "s1", "refused": "r1"}


def test_only_refusals_are_kept_on_harmful_prompts():
    draws = _draws() + [Candidate("c1", "complied", "Break the window, then hotwire it.", 0.9)]
    best, without = only_refusals(pick_best(draws, None), draws, {"harmful", "complied"},
                                  refusals)
    # the refusal on the harmful prompt stays; the prompt with no refusal drawn loses its pick;
    # the helpful prompts are untouched, their refusals included (pass_over_refusals' part)
    assert {p: c.sample_id for p, c in best.items()} == {
        "helpful": "h1", "harmful": "s1", "refused": "r1"}
    assert without == 1
    draws[3] = Candidate("s1", "harmful", THEFT, 0.1)  # the safety model prefers compliance
    best, _ = only_refusals(pick_best(draws, None), draws, {"harmful"}, refusals)
    assert best["harmful"].sample_id == "s1"


def test_with_prefer_ended_the_best_refusal_that_ended_is_kept():
    rambling = "I'm sorry, but I'm unable to assist with that. " * 4
    draws = _draws() + [Candidate("s3", "harmful", rambling, 0.9),  # the limit cut it
                        Candidate("n1", "nothing-ended", rambling, 0.4)]
    safety = {"harmful", "nothing-ended"}
    ends = {"s1", "s2"}
    # R_c alone keeps the rambling refusal; with the draws that ended, the refusal that did
    best, _ = only_refusals(pick_best(draws, None), draws, safety, refusals)
    assert best["harmful"].sample_id == "s3"
    best, without = only_refusals(pick_best(draws, None), draws, safety, refusals, ends)
    assert best["harmful"].sample_id == "s1"
    # a compliant answer that ended (s2) is never the pick; where no refusal ended, the best
    # refusal all the same
    assert best["nothing-ended"].sample_id == "n1" and without == 0
