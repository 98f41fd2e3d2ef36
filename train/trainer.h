/* trainer.h: an MLP classifier and its optimizer, trained through the kernel backend.
 *
 * The model is features -> hidden[0] -> ... -> hidden[H-1] -> classes: linear layers
 * y = x W^T + b (W of shape (out, in), as torch.nn.Linear), the spec's activation (ReLU or
 * GELU) after every hidden layer, and softmax cross-entropy on the logits. Everything runs
 * through a backend_t (kernels/backend.h); this module never calls BLAS itself, so the same
 * code trains on the CPU and on a GPU.
 *
 * Memory layout. All parameters live in ONE contiguous device buffer, layer after layer,
 * each layer's weight (out, in) row-major followed by its bias (out); the gradients live in
 * a second buffer with the same layout, so that a data-parallel step all-reduces one flat
 * buffer, and the optimizer state (SGD momentum, or AdamW m then v) lives in a third.
 *
 * The gradient buffer holds two more floats after the gradients: the step's loss sum and
 * its number of correct predictions, written on the device, so that one all-reduce carries
 * gradients and loss together and the host reads one pair per step.
 *
 * Data parallelism. forward_backward leaves d/dθ of (sum of the per-sample losses) /
 * global_batch; summed over the ranks' slices of a global batch that is the mean gradient
 * of the global batch, whatever the number of ranks. The averaging is folded into the
 * softmax cross-entropy kernel's scale: no pass over the gradients divides them.
 *
 * Precision (spec train.precision): fp32 and tf32 keep everything in F32 (tf32 is a
 * property of the backend's GEMMs, chosen when the backend is made); bf16 keeps F32 master
 * weights, optimizer state, biases, loss and gradients, and runs the GEMMs on BF16 inputs
 * and activations: the optimizer writes a BF16 copy of the weights in the same pass.
 *
 * The pipelined step (what the worker runs):
 *   trainer_next_batch()    host staging buffers for the next batch (pinned on a GPU)
 *   trainer_stage()         checks the labels and starts the copy on the copy stream,
 *                           with that step's learning rate
 *   trainer_step_launch()   issues forward, backward (each layer's gradients handed to the
 *                           reducer as soon as they are issued), reducer finish, optimizer;
 *                           as one CUDA graph replay where graphs are on
 *   trainer_step_finish()   waits for the step and reads its (all-reduced) loss
 * The next batch is gathered and staged between launch and finish, so on a GPU the copy
 * and the host's gather overlap the step that runs.
 */
#ifndef DROVER_TRAIN_TRAINER_H
#define DROVER_TRAIN_TRAINER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/jobspec.h"
#include "kernels/backend.h"

typedef struct trainer trainer_t;

/* Builds the MLP features -> spec->model.hidden... -> classes with spec->model.activation
 * on backend `be`. Parameters are initialised from spec->train.seed (He normal for the
 * weights of ReLU layers, Xavier normal for GELU layers and the output layer, biases zero),
 * identical on every rank and every backend. max_batch is the largest n that
 * forward_backward/evaluate will be given per call (sizes the activation buffers).
 * The spec is copied (only the model sizes, optimizer and schedule are kept); `be` is
 * borrowed and must outlive the trainer. On success the caller owns *out
 * (trainer_destroy); on failure *out is NULL and the error says what is wrong. */
drv_result_t trainer_new(const jobspec_t *spec, const backend_t *be, uint32_t features,
                         uint32_t classes, uint32_t max_batch, trainer_t **out);

/* Frees the trainer and its device buffers and nulls the caller's pointer. NULL-safe. */
void trainer_destroy(trainer_t **t);

/* Zeroes the gradients, runs forward + backward on n samples h_x (n, features) row-major
 * host floats and labels h_y (n), each in [0, classes), and leaves in the gradient buffer
 * d/dθ of (sum of the n per-sample CE losses) / global_batch, so summing it over ranks
 * gives the mean gradient of the global batch. Adds the loss sum and the number of correct
 * predictions to *loss_sum / *correct (either may be NULL). n may be 0 (grads zero).
 * DRV_ERR_INVALID when n > max_batch, global_batch == 0 or a label is out of range. */
drv_result_t trainer_forward_backward(trainer_t *t, const float *h_x, const int32_t *h_y,
                                      uint32_t n, uint32_t global_batch, double *loss_sum,
                                      uint32_t *correct);

/* The flat gradient buffer (backend memory; host memory for the CPU backend) and its
 * element count in *count (the parameters'; the loss sum and correct count follow at
 * [count] and [count + 1]), for the all-reduce. Owned by the trainer. */
float *trainer_grads(trainer_t *t, size_t *count);

/* The flat parameter buffer, same layout and ownership as trainer_grads. */
float *trainer_params(trainer_t *t, size_t *count);

/* The flat optimizer state (backend memory): SGD's momentum (one buffer the size of the
 * parameters) or AdamW's m then v (twice that), for snapshots and broadcast to newcomers.
 * Owned by the trainer. */
float *trainer_opt_state(trainer_t *t, size_t *count);

/* The learning rate at `step` (0-based) of `total_steps`: linear warmup from 0 over
 * lr_schedule.warmup_steps (lr * step / warmup_steps), then constant, or cosine decay from
 * lr down to lr_min, reaching lr_min at step == total_steps and staying there after. */
float trainer_lr(const jobspec_t *spec, uint64_t step, uint64_t total_steps);

/* Applies the optimizer to the parameters with the gradients now in the gradient buffer,
 * at learning rate trainer_lr(step, total_steps) (AdamW's bias correction uses t = step+1).
 * Stores the lr used in *lr (may be NULL). */
drv_result_t trainer_apply(trainer_t *t, uint64_t step, uint64_t total_steps, float *lr);

/* A gradient reducer: how a data-parallel step sums the gradient buffer across ranks.
 * begin() (optional) is called when a step starts to be issued; ready(first) is called in
 * the backward pass each time gradients [first, count + 2) have all been issued (layer by
 * layer, from the last), so a reducer can start summing those while the rest of the
 * backward pass runs; finish() is called once the backward pass is issued and must leave
 * the complete sums visible to the ops issued after it. wait(), when set, replaces the
 * backend's synchronize() at the end of a step (a wait with a deadline). When a step
 * fails, the trainer first destroys its captured graphs (a communicator whose operations a
 * live graph holds cannot be aborted), then calls abort() (optional: end every pending
 * collective), then waits for the device. agree() (optional) sums one value over the
 * ranks (the host control plane), so that choices such as cuda_graphs: auto are the same
 * on every rank. grads, when set, is where the optimizer reads the summed gradients (of
 * grads_type) instead of the trainer's own buffer. Borrowed; must outlive the trainer's
 * use. */
typedef struct {
  void *ctx;
  drv_result_t (*begin)(void *ctx);
  drv_result_t (*ready)(void *ctx, size_t first);
  drv_result_t (*finish)(void *ctx);
  drv_result_t (*wait)(void *ctx);
  void (*abort)(void *ctx);
  drv_result_t (*agree)(void *ctx, double *value);
  const void *grads;
  be_dtype_t grads_type;
} trainer_reducer_t;

/* Sets (or with NULL removes) the reducer the next launches use. Drops captured graphs and
 * starts the cuda_graphs: auto choice again (every rank of a new world does so together).
 * Call it with NULL before destroying a reducer whose operations graphs may hold. */
void trainer_set_reducer(trainer_t *t, const trainer_reducer_t *r);

/* Host buffers to gather the next batch into: x (max_batch, features), y (max_batch). */
void trainer_next_batch(trainer_t *t, float **h_x, int32_t **h_y);

/* Stages the n samples written to trainer_next_batch()'s buffers as step `step` (0-based)
 * of `total_steps` with global batch `global_batch` (the loss scale and the learning rate
 * are fixed here). DRV_ERR_INVALID when n > max_batch, global_batch == 0 or a label is out
 * of range. Staging again before a launch replaces the staged batch (trainer_next_batch
 * then hands out the staged slot's buffers). */
drv_result_t trainer_stage(trainer_t *t, uint32_t n, uint32_t global_batch, uint64_t step,
                           uint64_t total_steps);

/* Issues the staged step: forward, backward, reduce, optimizer. Returns without waiting
 * (on a GPU). The learning rate used goes to *lr (may be NULL). */
drv_result_t trainer_step_launch(trainer_t *t, float *lr);

/* Waits for the launched step; *loss_sum gets the loss sum the reducer summed (all ranks'),
 * *data_wait_ms how long the device sat waiting for input data (either may be NULL). */
drv_result_t trainer_step_finish(trainer_t *t, double *loss_sum, double *data_wait_ms);

/* Whether steps replay a captured CUDA graph (after the automatic choice, if any). */
bool trainer_uses_graphs(const trainer_t *t);

/* Keeps the parameters and optimizer state aside on the device (the commit), and puts
 * them back. trainer_rollback without a commit is an error. */
drv_result_t trainer_commit(trainer_t *t);
drv_result_t trainer_rollback(trainer_t *t);

/* Copies the parameters (count from trainer_params) and optimizer state (count from
 * trainer_opt_state) to host memory, or from host memory into the trainer. */
drv_result_t trainer_get_state(trainer_t *t, float *h_params, float *h_opt);
drv_result_t trainer_set_state(trainer_t *t, const float *h_params, const float *h_opt);

/* Forward only over n samples (in batches of at most max_batch): adds the sum of the
 * per-sample losses to *loss_sum and the number of correct predictions to *correct (either
 * may be NULL). Leaves the gradients untouched. */
drv_result_t trainer_evaluate(trainer_t *t, const float *h_x, const int32_t *h_y, uint32_t n,
                              double *loss_sum, uint32_t *correct);

/* Writes the model as .safetensors: tensors "layers.{i}.weight" (out, in) and
 * "layers.{i}.bias" (out), F32, as torch.nn.Linear's state dict, plus __metadata__
 * {"format": "pt", "model": "mlp", "activation": "relu"|"gelu", "sizes": "784,256,10"}.
 * Written atomically (temp file, fsync, rename). */
drv_result_t trainer_save(const trainer_t *t, const char *path);

/* Layer count (hidden layers + 1) and the size of layer boundary i, 0 <= i <= layers:
 * sizes[0] = features, sizes[layers] = classes. */
uint32_t trainer_layers(const trainer_t *t);
uint32_t trainer_size(const trainer_t *t, uint32_t i);

/* Which flat buffer a tensor lives in. */
typedef enum { TRAINER_PARAMS = 0, TRAINER_OPT_STATE = 1 } trainer_buffer_t;

/* One named tensor of the trainer's state: a slice of one of its flat buffers, `buffer`
 * (TRAINER_PARAMS: trainer_params'; TRAINER_OPT_STATE: trainer_opt_state's). */
typedef struct {
  char name[32]; /* "layers.{l}.weight", "layers.{l}.bias", "optimizer.state" */
  uint32_t ndim; /* 2 for a weight, 1 otherwise */
  uint64_t shape[2];
  uint64_t count; /* elements, the product of shape */
  trainer_buffer_t buffer;
  size_t offset; /* first float of the tensor in that buffer */
} trainer_tensor_t;

/* The most tensors trainer_tensors describes. */
#define TRAINER_MAX_TENSORS (2 * (JOBSPEC_MAX_HIDDEN + 1) + 1)

/* The tensors of the trainer's state, in this order: for each layer l, its weight (out, in)
 * and its bias (out) over the flat parameter buffer (named as torch.nn.Linear's state dict,
 * what trainer_save writes), then the whole optimizer state as one tensor (nopt) over the
 * optimizer-state buffer. The first 2 * trainer_layers() entries are the model. *count
 * (2 * layers + 1) receives how many. The same layout on every backend, so host copies of
 * the buffers (trainer_get_state) can be cut with it too. Owned by the trainer. */
const trainer_tensor_t *trainer_tensors(const trainer_t *t, size_t *count);

#endif
