"""What the federated methods share, so that no method imports another:

- ``aggregate``: FedAvg arithmetic on flat buffers (the runtime's, and the tests');
- ``schedules``: learning-rate schedules; ``training``: minibatches, SGD epochs, evaluation;
- ``tasks``: support/query task pairs and train/validation holdouts of a client's data;
- ``maml``: the first-order MAML task and meta learners (eq. 9-10);
- ``meta``: FedMetaNAS's local search and schedules as a component (temperature, learners,
  when soft pruning runs), composed by FedMetaNAS and its meta variants;
- ``pruning``: soft pruning of a spec, and the "prune this round?" schedule;
- ``supernet``: base of the methods that search the DARTS space;
- ``subnet``: base of the single-path methods (FedDSNAS, the RL family): the argmax
  child, training one path, folding subnet updates into the supernet;
- ``policy``: REINFORCE on per-edge categorical policies;
- ``server_opt``: FedAdam/FedYogi on the architecture logits, moments in the server state;
- ``derived``: the evaluation recipe's training of a fixed network (random_nas, FedNAS's
  retraining, FedMetaNAS's ``derived_training: sgd``) and the keys of that option;
- ``fixed``: base of the fixed-architecture methods.
"""
