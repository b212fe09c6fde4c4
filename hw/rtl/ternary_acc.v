// mmfree reference core: ternary accumulate, the operation that replaces multiply-accumulate
// in a MatMul-free BitLinear. acc[row] = sum_k T[row][k] * x[k], T in {-1, 0, +1}, x int8.
//
// Weights arrive verbatim in the library's TQ2 format (include/mmfree/ternary_format.hpp):
// each byte holds four 2-bit digits d = w + 1, byte j of a 64-byte block holding weights
// j, j+64, j+128, j+192 of that block. A beat carries BYTES consecutive packed bytes
// (LANES = 4 * BYTES weights) and the LANES activations that pair with them: activation
// lane k*BYTES + i goes with digit k (bits 2k+1:2k) of byte i. The driver gathers the
// activations in that order; the weight stream is the file's bytes as they are.
//
// Protocol: in_valid/in_ready and out_valid/out_ready handshakes (a transfer happens on a
// rising clock edge where both are high). in_last marks the last beat of a row; one
// out_acc per row follows, in order. Rows are independent; the accumulator clears itself.
//
// No multipliers: each lane selects +x, -x or 0 from its digit, a balanced adder tree sums
// the lanes, and one adder accumulates. Throughput is one beat per cycle (LANES weights per
// cycle) whenever the output side keeps up; latency is two cycles from the last beat.
module ternary_acc #(
    parameter integer BYTES = 4,   // packed bytes per beat; LANES = 4 * BYTES (power of two)
    parameter integer ACC_W = 32   // accumulator width
) (
    input  wire                    clk,
    input  wire                    rst,       // synchronous, active high
    input  wire                    in_valid,
    output wire                    in_ready,
    input  wire [8*BYTES-1:0]      in_w,      // BYTES packed TQ2 bytes
    input  wire [8*4*BYTES-1:0]    in_x,      // LANES int8 activations
    input  wire                    in_last,
    output reg                     out_valid,
    input  wire                    out_ready,
    output reg signed [ACC_W-1:0]  out_acc
);
  localparam integer LANES = 4 * BYTES;
  localparam integer LOG = $clog2(LANES);
  localparam integer SUM_W = 9 + LOG;  // |x| <= 128 per lane: 9 bits signed, +1 bit per tree level

  // ---- parameter checks, at elaboration: instantiating an undefined module stops every tool
  // (yosys, Verilator) with the module's name as the message.
  generate
    if (BYTES < 1 || BYTES > 64 || (64 % BYTES) != 0 || (BYTES & (BYTES - 1)) != 0) begin : bad_bytes
      BYTES_must_be_a_power_of_two_that_divides_64 check();
    end
    if (ACC_W < SUM_W + 1 || ACC_W > 64) begin : bad_acc_w
      ACC_W_must_hold_a_beat_sum_and_at_most_64_bits check();
    end
  endgenerate

  // ---- lane terms: sign selection ---------------------------------------------------------
  // Heap-ordered adder tree: leaves at LANES-1 ..., node[0] is the sum.
  wire signed [SUM_W-1:0] node [0:2*LANES-2] /* verilator split_var */;
  genvar g;
  generate
    for (g = 0; g < LANES; g = g + 1) begin : lane
      localparam integer K = g / BYTES;  // digit index within the byte
      localparam integer I = g % BYTES;  // byte index within the beat
      wire [1:0] d = in_w[8*I + 2*K +: 2];
      wire signed [7:0] x = in_x[8*g +: 8];
      wire signed [SUM_W-1:0] xs = {{(SUM_W-8){x[7]}}, x};
      // d = 2: +x, d = 0: -x, d = 1: 0. The unused value 3 (never written by the library, refused
      // in files) also contributes 0: defined, and the cheapest selection.
      assign node[LANES-1+g] = (d == 2'd2) ? xs : (d == 2'd0) ? -xs : {SUM_W{1'b0}};
    end
    for (g = 0; g < LANES - 1; g = g + 1) begin : tree
      assign node[g] = node[2*g+1] + node[2*g+2];
    end
  endgenerate

  // ---- stage 1: register the beat's sum ------------------------------------------------------
  reg                    s1_valid, s1_last;
  reg signed [SUM_W-1:0] s1_sum;
  // ---- stage 2: accumulate; hand the row's total to the output register -----------------------
  reg signed [ACC_W-1:0] acc;

  // Stage 2 can take stage 1's beat unless it is a row end and the output is still occupied.
  wire s2_take = s1_valid && (!s1_last || !out_valid || out_ready);
  assign in_ready = !s1_valid || s2_take;

  wire signed [ACC_W-1:0] s1_ext = {{(ACC_W-SUM_W){s1_sum[SUM_W-1]}}, s1_sum};

  always @(posedge clk) begin
    if (rst) begin
      s1_valid <= 1'b0;
      s1_last <= 1'b0;
      s1_sum <= {SUM_W{1'b0}};
      acc <= {ACC_W{1'b0}};
      out_valid <= 1'b0;
      out_acc <= {ACC_W{1'b0}};
    end else begin
      if (out_valid && out_ready) out_valid <= 1'b0;
      if (s2_take) begin
        if (s1_last) begin
          out_acc <= acc + s1_ext;
          out_valid <= 1'b1;
          acc <= {ACC_W{1'b0}};
        end else begin
          acc <= acc + s1_ext;
        end
      end
      if (in_ready) begin
        s1_valid <= in_valid;
        if (in_valid) begin
          s1_sum <= node[0];
          s1_last <= in_last;
        end
      end
    end
  end
endmodule
