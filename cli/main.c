/* main.c: the `drover` command. */
#include <stdio.h>
int main(void) { puts("drover"); return 0; }
