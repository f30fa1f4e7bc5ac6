"""Reward models: the model and its margin loss, training, evaluation per strength and safety
label, the Llama 2 data mixes, retraining with its promotion gate, the scoring engine and the
combined reward R_c."""
