/* cli.c: the helpers every subcommand shares (cli.h). */
#include "cli/cli.h"

#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/keys.h"

#include "common/settings.h"

const char *cli_coordinator(const char *flag) {
  static char joined[256];
  if (flag) return flag;
  const char *env = getenv("DROVER_COORDINATOR"), *join = drv_setting_text(DRV_TEXT_JOIN);
  if ((!env || !*env) && *join && !joined[0]) {
    keys_file_t k;
    if (keys_read(join, &k) == DRV_OK) snprintf(joined, sizeof joined, "%s", k.coordinator);
    memset(&k, 0, sizeof k);
  }
  return (!env || !*env) && joined[0] ? joined : drv_setting_text(DRV_TEXT_COORDINATOR);
}

drv_result_t cli_peer_keys(const char *own, sock_keys_t *keys, int *plaintext) {
  *plaintext = drv_setting(DRV_SET_INSECURE) != 0;
  if (*plaintext) return DRV_OK;
  char from[1100];
  return keys_for_peer(drv_setting_text(DRV_TEXT_JOIN), cli_state_dir(NULL), own, keys, NULL, 0,
                       from, sizeof from);
}

drv_result_t cli_secure(sock_ctx_t *ctx, const char *own) {
  sock_keys_t keys;
  int plaintext;
  DRV_CHECK(cli_peer_keys(own, &keys, &plaintext));
  if (plaintext && !sock_ctx_is_secure(ctx))
    sock_ctx_plaintext(ctx);
  else if (!plaintext)
    sock_ctx_secure(ctx, &keys);
  memset(&keys, 0, sizeof keys);
  return DRV_OK;
}

const char *cli_state_dir(const char *flag) {
  static char *buf; /* made once, whole: a path is never cut */
  if (flag) return flag;
  const char *env = drv_setting_text(DRV_TEXT_STATE_DIR);
  if (*env) return env;
  if (buf) return buf;
  const char *xdg = getenv("XDG_STATE_HOME");
  const char *home = getenv("HOME");
  if ((xdg && *xdg ? asprintf(&buf, "%s/drover", xdg)
                   : asprintf(&buf, "%s/.local/state/drover", home && *home ? home : "/tmp")) < 0)
    buf = "/tmp/drover-state"; /* out of memory */
  return buf;
}

const char *cli_self_exe(void) {
  static char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "drover";
  buf[n] = '\0';
  return buf;
}

// --- JSON ----------------------------------------------------------------------------------

void cli_json_str(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(out, "\\%c", *p);
    else if (*p == '\n')
      fputs("\\n", out);
    else if (*p < 0x20)
      fprintf(out, "\\u%04x", *p);
    else
      fputc(*p, out);
  }
  fputc('"', out);
}

void cli_json_num(FILE *out, double v) {
  if (isfinite(v))
    fprintf(out, "%.10g", v);
  else
    fputs("null", out);
}

// --- Usage and signals ---------------------------------------------------------------------

int cli_usage_fail(const char *cmd, const char *usage) {
  fprintf(stderr, "usage: drover %s %s\n", cmd, usage);
  return 2;
}

static volatile sig_atomic_t stop_flag;

/* Counts stop requests: an agent drains on the first and stops at once on the second. */
static void on_stop_signal(int sig) {
  (void)sig;
  if (stop_flag < 2) stop_flag++;
}

volatile sig_atomic_t *cli_stop_signals(void) {
  struct sigaction sa = {.sa_handler = on_stop_signal};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);
  return &stop_flag;
}
