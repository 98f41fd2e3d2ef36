/* gpuinfo.c: see gpuinfo.h. */
#include "kernels/gpuinfo.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

static int by_bus_id(const void *a, const void *b) {
  const proto_gpu_t *x = a, *y = b;
  int c = strcmp(x->pci_bus_id ? x->pci_bus_id : "", y->pci_bus_id ? y->pci_bus_id : "");
  return c ? c : (x->index > y->index) - (x->index < y->index);
}

void gpuinfo_free(proto_gpu_t *gpus, uint32_t count) {
  for (uint32_t i = 0; gpus && i < count; i++) {
    free((char *)gpus[i].name);
    free((char *)gpus[i].pci_bus_id);
    free((char *)gpus[i].uuid);
  }
  free(gpus);
}

void gpuinfo_fake(uint32_t n, proto_gpu_t **gpus, uint32_t *count) {
  *gpus = NULL;
  *count = 0;
  n = n > GPUINFO_MAX ? GPUINFO_MAX : n;
  proto_gpu_t *g = n ? calloc(n, sizeof *g) : NULL;
  if (!g) return;
  for (uint32_t i = 0; i < n; i++) {
    char bus[32], uuid[32];
    snprintf(bus, sizeof bus, "0000:%02x:00.0", (unsigned)(n - i));
    snprintf(uuid, sizeof uuid, "GPU-fake-%u", i);
    g[i] = (proto_gpu_t){.index = i,
                         .name = strdup("fake GPU (DROVER_FAKE_GPUS)"),
                         .mem_bytes = 16ull << 30,
                         .pci_bus_id = strdup(bus),
                         .uuid = strdup(uuid)};
  }
  qsort(g, n, sizeof *g, by_bus_id);
  *gpus = g;
  *count = n;
}

#ifdef DROVER_HAVE_CUDA
#include <cuda_runtime_api.h>

/* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", as nvidia-smi and CUDA_VISIBLE_DEVICES have it. */
static char *uuid_text(const cudaUUID_t *u) {
  const unsigned char *b = (const unsigned char *)u->bytes;
  char s[64];
  int n = snprintf(s, sizeof s, "GPU-");
  for (int i = 0; i < 16; i++) {
    n += snprintf(s + n, sizeof s - (size_t)n, "%02x", b[i]);
    if (i == 3 || i == 5 || i == 7 || i == 9) n += snprintf(s + n, sizeof s - (size_t)n, "-");
  }
  return strdup(s);
}

void gpuinfo_query(proto_gpu_t **gpus, uint32_t *count) {
  *gpus = NULL;
  *count = 0;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n <= 0) {
    log_debug("no GPU: %s", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
    return;
  }
  if (n > GPUINFO_MAX) n = GPUINFO_MAX;
  proto_gpu_t *g = calloc((size_t)n, sizeof *g);
  if (!g) return;
  uint32_t k = 0;
  for (int i = 0; i < n; i++) {
    struct cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    char bus[32];
    snprintf(bus, sizeof bus, "%04x:%02x:%02x.0", (unsigned)p.pciDomainID, (unsigned)p.pciBusID,
             (unsigned)p.pciDeviceID);
    g[k] = (proto_gpu_t){.index = (uint32_t)i,
                         .name = strdup(p.name),
                         .mem_bytes = p.totalGlobalMem,
                         .cc_major = (uint32_t)p.major,
                         .cc_minor = (uint32_t)p.minor,
                         .pci_bus_id = strdup(bus),
                         .uuid = uuid_text(&p.uuid)};
    k++;
  }
  qsort(g, k, sizeof *g, by_bus_id);
  *gpus = g;
  *count = k;
}
#else
void gpuinfo_query(proto_gpu_t **gpus, uint32_t *count) {
  *gpus = NULL;
  *count = 0;
}
#endif

// --- NVML, loaded when first asked for ---------------------------------------------------

/* The few NVML calls used, as nvml.h declares them (a stable C ABI). */
typedef struct nvml_device *nvml_device_t;
typedef struct {
  unsigned long long total, free, used;
} nvml_memory_t;
typedef struct {
  unsigned int gpu, memory;
} nvml_utilization_t;

static struct {
  int tried, ok;
  int (*by_uuid)(const char *, nvml_device_t *);
  int (*by_bus)(const char *, nvml_device_t *);
  int (*memory)(nvml_device_t, nvml_memory_t *);
  int (*utilization)(nvml_device_t, nvml_utilization_t *);
} nvml;

static int nvml_load(void) {
  if (nvml.tried) return nvml.ok;
  nvml.tried = 1;
  void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    log_debug("no GPU use reports: %s", dlerror());
    return 0;
  }
  int (*init)(void) = (int (*)(void))dlsym(h, "nvmlInit_v2");
  *(void **)&nvml.by_uuid = dlsym(h, "nvmlDeviceGetHandleByUUID");
  *(void **)&nvml.by_bus = dlsym(h, "nvmlDeviceGetHandleByPciBusId_v2");
  *(void **)&nvml.memory = dlsym(h, "nvmlDeviceGetMemoryInfo");
  *(void **)&nvml.utilization = dlsym(h, "nvmlDeviceGetUtilizationRates");
  if (!init || !nvml.by_uuid || !nvml.by_bus || !nvml.memory || !nvml.utilization || init() != 0) {
    log_warn("NVML (libnvidia-ml.so.1) did not start: no GPU use reports");
    return 0;
  }
  return nvml.ok = 1;
}

uint32_t gpuinfo_usage(const proto_gpu_t *gpus, uint32_t n, proto_gpu_stat_t *out) {
  if (!n || !nvml_load()) return 0;
  uint32_t k = 0;
  for (uint32_t i = 0; i < n; i++) {
    nvml_device_t d = NULL;
    if ((!gpus[i].uuid || nvml.by_uuid(gpus[i].uuid, &d) != 0) &&
        (!gpus[i].pci_bus_id || nvml.by_bus(gpus[i].pci_bus_id, &d) != 0))
      continue;
    nvml_memory_t mem;
    nvml_utilization_t use;
    if (nvml.memory(d, &mem) != 0 || nvml.utilization(d, &use) != 0) continue;
    out[k++] = (proto_gpu_stat_t){
        .index = gpus[i].index, .mem_used_bytes = mem.used, .util_pct = use.gpu};
  }
  return k;
}
