"""Graph tasks: transductive node classification (GNN teachers, MLP students) and graph unlearning."""
