"""Evaluation tasks, one module per benchmark family; importing a module registers its tasks
in :data:`lorasoups.eval.registry.TASKS`."""
