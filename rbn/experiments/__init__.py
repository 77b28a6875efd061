"""The experiments: Fashion-MNIST data, training, fine-tuning, evaluation, OOD fitting, reports and paired statistics."""
