/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* dnsaccel: the BPF target's asm/posix_types.h is the generic one (see ../update.sh). */
#include <asm-generic/posix_types.h>
