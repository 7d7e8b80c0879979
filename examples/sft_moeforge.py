"""Supervised fine-tuning on a chat dataset with moeforge: sft_trl.py with the imports changed.

    python examples/sft_moeforge.py --model Qwen/Qwen3-30B-A3B --data chats.jsonl --output_dir sft

Each line of --data is {"messages": [{"role": ..., "content": ...}, ...]}; the first --eval_examples
lines are held out. moeforge's load_dataset reads local JSON Lines files as the datasets library does,
so the script needs neither datasets nor TRL. Prints one JSON line: losses, steps, time.
"""
import argparse
import json
import time

from moeforge import AutoTokenizer, SFTConfig, SFTTrainer, load_dataset


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder or Hugging Face model id")
    parser.add_argument("--data", required=True, help="JSONL file of {'messages': [...]} lines")
    parser.add_argument("--output_dir", default="sft")
    parser.add_argument("--max_steps", type=int, default=50)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--eval_examples", type=int, default=8, help="examples held out for evaluation")
    parser.add_argument("--max_length", type=int, default=512, help="tokens kept per example")
    a = parser.parse_args()

    train = load_dataset("json", data_files=a.data, split=f"train[{a.eval_examples}:]")
    held_out = load_dataset("json", data_files=a.data, split=f"train[:{a.eval_examples}]")
    tokenizer = AutoTokenizer.from_pretrained(a.model)

    args = SFTConfig(
        output_dir=a.output_dir,
        max_steps=a.max_steps,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        learning_rate=a.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        logging_steps=5,
        save_steps=1000,
        seed=42,
        report_to="none",
        max_length=a.max_length,
        packing=False,
        gradient_checkpointing=False,
    )
    trainer = SFTTrainer(model=a.model, args=args, train_dataset=train, eval_dataset=held_out,
                         processing_class=tokenizer)
    start = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    trainer.save_model(a.output_dir)
    print(json.dumps({"train_loss": result.training_loss, "eval_loss": metrics["eval_loss"],
                      "steps": result.global_step, "train_seconds": round(seconds, 3)}))


if __name__ == "__main__":
    main()
