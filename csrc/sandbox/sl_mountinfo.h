/* sl_mountinfo.h - reading /proc/self/mountinfo. */
#ifndef SL_MOUNTINFO_H
#define SL_MOUNTINFO_H

/* Undo mountinfo's octal escapes (\040 for a space, \011, \012, \134) in place. */
void sl_mountinfo_unescape(char *s);

#endif
