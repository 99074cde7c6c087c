/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* dnsaccel: the BPF target's asm/bitsperlong.h is the generic one (see ../update.sh). */
#include <asm-generic/bitsperlong.h>
