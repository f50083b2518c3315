"""Benchmark records shared by the evaluation and CLI tests: CounterFact in the ROME layout and in
EasyEdit's split layout, zsRE in the MEND and KnowEdit layouts (tiny-vocabulary words)."""

ROME_RECORD = {
    "case_id": 7,
    "requested_rewrite": {
        "prompt": "the mother tongue of {} is",
        "subject": "danielle darrieux",
        "target_new": {"str": "english"},
        "target_true": {"str": "french"},
    },
    "paraphrase_prompts": [
        "danielle darrieux was a w40 the language of",
        "the language of danielle darrieux is",
    ],
    "neighborhood_prompts": ["the mother tongue of w50 w51 is", "the language of paris is"],
    "generation_prompts": ["danielle darrieux is"],
}
EASYEDIT_RECORD = {
    "case_id": 8,
    "prompt": "the eiffel tower is located in the city of",
    "subject": "the eiffel tower",
    "target_new": "rome",
    "ground_truth": "paris",
    "rephrase_prompt": "the city of the eiffel tower is",
    "locality_prompt": "the capital of france is",
    "locality_ground_truth": "paris",
}
MEND = {
    "subject": "danielle darrieux",
    "src": "the mother tongue of danielle darrieux is",
    "alt": "english",
    "rephrase": "danielle darrieux speaks the language",
    "loc": "nq question: the capital of france is",
    "loc_ans": "paris",
}
KNOWEDIT = {
    "subject": "the eiffel tower",
    "prompt": "the eiffel tower is located in the city of",
    "target_new": "rome",
    "ground_truth": ["paris"],
    "rephrase_prompt": "the city of the eiffel tower is",
    "locality": {"Relation_Specificity": [{"prompt": "the eiffel tower is in", "ground_truth": ["france"]}]},
}

# texts for tiny models' key statistics, and context templates for their edits
TEXTS = [
    "the eiffel tower is located in the city of paris in france",
    "the capital of france is paris and the language is french",
    "danielle darrieux was french and the mother tongue of danielle darrieux is french",
    "rome is the capital city of a w40 w41 w42 on the w50",
    "english is a language w33 w34 with w60 w61 w62 w63 w64 w65",
] * 8
TEMPLATES = ["{}", "the city of rome . {}", "a tower in paris was w44 . {}"]
