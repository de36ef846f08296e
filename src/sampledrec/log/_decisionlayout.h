/*
 * The layout of a decision entry, as the C accelerator writes (_merklefast.c) and reads
 * (_decisionscan.c) it. The definition is the table DECISION in format.py; C cannot read it, so
 * _merklefast.decision_layout() reports these values and format.decision_layout() builds the same
 * dict from the table: hashing.py uses the accelerator only when the two are equal, and
 * tests/test_auditlog.py checks them. Change both together.
 */
#ifndef SAMPLEDREC_DECISIONLAYOUT_H
#define SAMPLEDREC_DECISIONLAYOUT_H

/* every entry: version u8 | type u8 | time u64be */
#define ENTRY_VERSION 1
#define ENTRY_HEADER 10

#define T_DECISION 0x05

/* public fields */
#define TAG_EPOCH_ID 0x01
#define TAG_POLICY_VERSION 0x02
#define TAG_RULE 0x03
#define TAG_THRESHOLD 0x04
#define TAG_DRAW 0x05
#define TAG_REASON 0x06
/* personal fields, inside the sealed field */
#define TAG_CALL_REF 0x20
#define TAG_AGENT 0x21
#define TAG_CALLER_PSEUDONYM 0x22
#define TAG_ATTRIBUTES 0x23 /* the rules' attributes of the call, compact JSON */
/* sealed = kid_len u8 | kid | kcv | iv | ciphertext */
#define TAG_SEALED 0xF0
#define KCV_SIZE 4
#define IV_SIZE 16

#define DRAW_SIZE 7 /* the writer's draw: 56 bits, always 7 bytes */

/* the first byte of a call reference: given as bytes, or as text (UTF-8) */
#define REF_BYTES 0x00
#define REF_TEXT 0x01

#endif
